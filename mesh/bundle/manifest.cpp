#include "mesh/bundle/manifest.h"

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>
#include <sodium.h>

#include <cstring>
#include <set>

#include "mesh/bundle/fs.h"
#include "schemas/bundle.capnp.h"

namespace mesh::bundle {

using util::err;
using util::Result;

namespace {

bool matchesNameRule(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  auto lowerOrDigit = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  if (!lowerOrDigit(name[0])) return false;
  for (char c : name) {
    if (!lowerOrDigit(c) && c != '.' && c != '_' && c != '-') return false;
  }
  return true;
}

void putU32(std::string& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>(v >> (8 * i) & 0xff));
}

std::uint32_t getU32(std::string_view in) {
  std::uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = v << 8 | static_cast<unsigned char>(in[i]);
  return v;
}

std::string domainMessage(std::string_view manifestBytes) {
  std::string msg;
  msg.reserve(kManifestDomain.size() + manifestBytes.size());
  msg.append(kManifestDomain);
  msg.append(manifestBytes);
  return msg;
}

}  // namespace

bool isValidBundleName(std::string_view name) {
  return matchesNameRule(name) && name != "audit.log";
}

bool isValidHandlerName(std::string_view name) { return matchesNameRule(name); }

std::string providedHandler(std::string_view file) {
  constexpr std::string_view kServe = ".serve";
  if (file.size() > kServe.size() && file.ends_with(kServe)) {
    return std::string(file.substr(0, file.size() - kServe.size()));
  }
  return std::string(file);
}

std::string encodeManifest(const ManifestInfo& m) {
  MESH_ASSERT(isValidBundleName(m.name), "manifest name follows the name rule");
  MESH_ASSERT(m.version >= 1, "manifest version >= 1");
  MESH_ASSERT(m.payloadSha256.size() == crypto_hash_sha256_BYTES, "32-byte payload hash");
  MESH_ASSERT(m.handlers.size() <= kMaxHandlers, "handler count within the limit");
  capnp::MallocMessageBuilder builder;
  auto root = builder.initRoot<proto::Manifest>();
  root.setName(m.name);
  root.setVersion(m.version);
  root.setCreatedMs(m.createdMs);
  root.setExpiresMs(m.expiresMs);
  root.setPayloadSize(m.payloadSize);
  root.setPayloadSha256(kj::arrayPtr(reinterpret_cast<const kj::byte*>(m.payloadSha256.data()),
                                     m.payloadSha256.size()));
  auto handlers = root.initHandlers(static_cast<unsigned>(m.handlers.size()));
  for (unsigned i = 0; i < m.handlers.size(); ++i) handlers.set(i, m.handlers[i]);
  kj::Array<capnp::word> words = capnp::messageToFlatArray(builder);
  auto bytes = words.asBytes();
  return std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
}

Result<ManifestInfo> decodeManifest(std::string_view bytes) {
  if (bytes.empty() || bytes.size() % sizeof(capnp::word) != 0) {
    return err("manifest length " + std::to_string(bytes.size()) + " is not a multiple of 8");
  }
  // Copy into a word array: Cap'n Proto needs 8-byte alignment.
  kj::Array<capnp::word> words = kj::heapArray<capnp::word>(bytes.size() / sizeof(capnp::word));
  std::memcpy(words.begin(), bytes.data(), bytes.size());
  capnp::ReaderOptions options;
  options.traversalLimitInWords = words.size() + 16;  // every word read at most once, plus slack
  options.nestingLimit = 4;
  ManifestInfo m;
  try {
    capnp::FlatArrayMessageReader reader(words.asPtr(), options);
    if (reader.getEnd() != words.end()) return err("manifest has bytes after its message");
    auto root = reader.getRoot<proto::Manifest>();
    std::string_view name(root.getName().cStr(), root.getName().size());
    if (!isValidBundleName(name)) {
      return err("manifest name '" + printable(name, 80) +
                 "' breaks the rule [a-z0-9][a-z0-9._-]{0,63}");
    }
    m.name = std::string(name);
    m.version = root.getVersion();
    if (m.version == 0) return err("manifest version is 0: versions start at 1");
    m.createdMs = root.getCreatedMs();
    m.expiresMs = root.getExpiresMs();
    if (m.createdMs > m.expiresMs) return err("manifest expires before it was created");
    m.payloadSize = root.getPayloadSize();
    auto hash = root.getPayloadSha256();
    if (hash.size() != crypto_hash_sha256_BYTES)
      return err("manifest payload hash is not 32 bytes");
    m.payloadSha256.assign(reinterpret_cast<const char*>(hash.begin()), hash.size());
    auto handlers = root.getHandlers();
    if (handlers.size() > kMaxHandlers) return err("manifest lists more than 256 handlers");
    std::set<std::string_view> seen;
    for (auto h : handlers) {
      std::string_view handler(h.cStr(), h.size());
      if (!isValidHandlerName(handler)) {
        return err("handler name '" + printable(handler, 80) +
                   "' breaks the rule [a-z0-9][a-z0-9._-]{0,63}");
      }
      if (!seen.insert(handler).second)
        return err("handler " + std::string(handler) + " is listed twice");
      m.handlers.emplace_back(handler);
    }
  } catch (const kj::Exception& e) {
    return err("manifest does not decode: " + printable(e.getDescription().cStr(), 160));
  }
  return m;
}

std::string signManifest(std::string_view manifestBytes, const ReleaseKey& key) {
  return key.sign(domainMessage(manifestBytes));
}

bool verifyManifestSignature(std::string_view manifestBytes, std::string_view signature,
                             const ReleasePublicKey& signer) {
  ensureSodium();
  if (signature.size() != kSignatureBytes) return false;
  std::string msg = domainMessage(manifestBytes);
  return crypto_sign_verify_detached(
             reinterpret_cast<const unsigned char*>(signature.data()),
             reinterpret_cast<const unsigned char*>(msg.data()), msg.size(),
             reinterpret_cast<const unsigned char*>(signer.bytes().data())) == 0;
}

std::string encodeBundleHead(std::string_view manifestBytes, const ReleasePublicKey& signer,
                             std::string_view signature) {
  MESH_ASSERT(signature.size() == kSignatureBytes, "64-byte signature");
  std::string head;
  head.reserve(kBundleHeaderBytes + manifestBytes.size() + kSignatureBlockBytes);
  head.append(kBundleMagic);
  putU32(head, kBundleFormatVersion);
  putU32(head, static_cast<std::uint32_t>(manifestBytes.size()));
  head.append(manifestBytes);
  head.append(signer.bytes());
  head.append(signature);
  return head;
}

Result<BundleHead> splitBundleHead(std::string_view head) {
  if (head.size() < kBundleHeaderBytes || head.substr(0, 8) != kBundleMagic) {
    return err("not a bundle head: bad magic");
  }
  if (getU32(head.substr(8, 4)) != kBundleFormatVersion)
    return err("unknown bundle format version");
  std::uint64_t len = getU32(head.substr(12, 4));
  if (head.size() != kBundleHeaderBytes + len + kSignatureBlockBytes) {
    return err("bundle head length does not match its manifest length");
  }
  BundleHead out;
  out.manifestBytes = std::string(head.substr(kBundleHeaderBytes, len));
  out.signerKey = std::string(head.substr(kBundleHeaderBytes + len, kPublicKeyBytes));
  out.signature = std::string(head.substr(kBundleHeaderBytes + len + kPublicKeyBytes));
  return out;
}

}  // namespace mesh::bundle
