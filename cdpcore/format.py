"""Format constants of recovery-point format version 2. docs/FORMAT.md is the
specification; every byte-level constant lives here, once."""

from __future__ import annotations

#: The format version, which a point's manifest carries: writers write this one; readers
#: read it and version 1 (cdpcore.manifest.CHUNK_IDS_OF_VERSION).
MANIFEST_VERSION = 2
#: Version byte of sealed blobs and index pages, unchanged since format version 1.
HEADER_VERSION = 1

#: Default volume block size. Chosen by measurement (docs/FORMAT.md, "Block size"):
#: scattered 4 KiB writes cost one block each, so smaller is cheaper to upload and store,
#: while each block costs a 32-byte index entry, a catalog row and a blob header.
DEFAULT_BLOCK_SIZE = 16 * 1024
MIN_BLOCK_SIZE = 4 * 1024
MAX_BLOCK_SIZE = 4 * 1024 * 1024

ID_SIZE = 32
#: The ID of an all-zero block, and of an index page whose entries are all zero IDs.
#: Such blocks and pages are never stored.
ZERO_ID = bytes(ID_SIZE)

# --- sealed blobs (chunks, manifests): magic || version || kind || compression || reserved || nonce
BLOB_MAGIC = b"CDPB"
BLOB_KIND_CHUNK = 1
BLOB_KIND_MANIFEST = 2
COMPRESSION_NONE = 0
COMPRESSION_ZSTD = 1
NONCE_SIZE = 12
TAG_SIZE = 16
BLOB_HEADER_SIZE = 4 + 1 + 1 + 1 + 1 + NONCE_SIZE  # 20
BLOB_OVERHEAD = BLOB_HEADER_SIZE + TAG_SIZE  # 36
#: zstd level: level 1 compresses at several hundred MB/s per core (bench/pipeline.py).
#: Writers may choose another (the agent's `compression_level`); readers need not know it.
ZSTD_LEVEL = 1
#: The levels a writer may choose; 0 stores blocks uncompressed (as zlib's level 0 does).
#: Below -7 zstd barely compresses 16 KiB blocks; above 19 its "ultra" levels need
#: windows far larger than a block.
MIN_ZSTD_LEVEL = -7
MAX_ZSTD_LEVEL = 19
#: Refuse to decompress a chunk claiming to be larger than this (zip-bomb guard).
MAX_PLAINTEXT_SIZE = MAX_BLOCK_SIZE
#: The same for a manifest: writers set no bound on it and the server takes sealed
#: manifests of up to 16 MiB, so a point whose layout outgrew 4 MiB stays readable.
MAX_MANIFEST_SIZE = 64 * 1024 * 1024

# --- index pages: magic || version || level || count || entries
PAGE_MAGIC = b"CDPI"
PAGE_HEADER_SIZE = 4 + 1 + 1 + 2  # 8
#: Entries per index page. 256 x 32 bytes = 8 KiB pages: a scattered write rewrites one
#: leaf page (8 KiB) plus one page per level above it.
PAGE_FANOUT = 256
MAX_TREE_HEIGHT = 8

# --- wrapped key file
KEY_FILE_VERSION = 1
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
#: Most memory a key file's scrypt parameters may make a reader spend (128 x n x r
#: bytes): every key file a writer makes (r = 8, n at most 2^20) stays within it.
MAX_SCRYPT_MEMORY = 1 << 30
MASTER_KEY_SIZE = 64  # 32 bytes AES-256-GCM key || 32 bytes chunk-ID key
