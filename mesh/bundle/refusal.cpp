#include "mesh/bundle/refusal.h"

namespace mesh::bundle {

const char* refusalName(Refusal reason) {
  switch (reason) {
    case Refusal::kGarbage:
      return "garbage";
    case Refusal::kMalformedManifest:
      return "malformed-manifest";
    case Refusal::kTruncated:
      return "truncated";
    case Refusal::kManifestTooLarge:
      return "manifest-too-large";
    case Refusal::kPayloadTooLarge:
      return "payload-too-large";
    case Refusal::kLongerThanDeclared:
      return "longer-than-declared";
    case Refusal::kUntrustedKey:
      return "untrusted-key";
    case Refusal::kBadSignature:
      return "bad-signature";
    case Refusal::kPayloadMismatch:
      return "payload-mismatch";
    case Refusal::kOlderVersion:
      return "older-version";
    case Refusal::kReplayedVersion:
      return "replayed-version";
    case Refusal::kBadVersion:
      return "bad-version";
    case Refusal::kExpired:
      return "expired";
    case Refusal::kUnsafePath:
      return "unsafe-path";
    case Refusal::kDuplicatePath:
      return "duplicate-path";
    case Refusal::kUnsupportedEntry:
      return "unsupported-entry";
    case Refusal::kBadMode:
      return "bad-mode";
    case Refusal::kTooManyFiles:
      return "too-many-files";
    case Refusal::kUnpackedTooLarge:
      return "unpacked-too-large";
    case Refusal::kMalformedArchive:
      return "malformed-archive";
    case Refusal::kMissingHandler:
      return "missing-handler";
    case Refusal::kHandlerClash:
      return "handler-clash";
    case Refusal::kLocalError:
      return "local-error";
  }
  return "unknown";
}

std::string Refused::describe() const { return std::string(refusalName(reason)) + ": " + message; }

}  // namespace mesh::bundle
