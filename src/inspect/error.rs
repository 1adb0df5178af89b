//! Why inspection rejected an archive: one [`InspectError`] variant per rejection rule,
//! each with a message a user can act on and a short stable reason code ([`InspectError::code`])
//! that the sealing code stores in the manifest.

use std::time::Duration;

/// A reason inspection refused an archive. Every archive is treated as hostile, so any
/// structure the inspector cannot vouch for is a rejection, never a guess.
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum InspectError {
    /// Reading the input failed (not a property of the archive).
    #[error("cannot read the archive: {0}")]
    Io(#[from] std::io::Error),
    /// A member path starts with `/`.
    #[error(
        "member {path:?} (header at offset {offset}) has an absolute path; archives must hold relative paths only"
    )]
    AbsolutePath {
        /// The path as found.
        path: String,
        /// Offset of the member's header in the tar stream.
        offset: u64,
    },
    /// A member path has a `..` component.
    #[error(
        "member {path:?} (header at offset {offset}) has a `..` component and could escape its directory"
    )]
    DotDotPath {
        /// The path as found.
        path: String,
        /// Offset of the member's header.
        offset: u64,
    },
    /// A member path is empty.
    #[error("the member whose header is at offset {offset} has an empty path")]
    EmptyPath {
        /// Offset of the member's header.
        offset: u64,
    },
    /// A member path from a PAX or GNU long-name record holds a NUL byte.
    #[error(
        "the member whose header is at offset {offset} has a NUL byte inside its {source_kind} path"
    )]
    NulInPath {
        /// Where the path came from (`PAX path`, `GNU long name`, ...).
        source_kind: &'static str,
        /// Offset of the header that carried the path.
        offset: u64,
    },
    /// A member path is not valid UTF-8.
    #[error("the member whose header is at offset {offset} has a path that is not valid UTF-8")]
    PathEncoding {
        /// Offset of the member's header.
        offset: u64,
    },
    /// A hard link or symbolic link member.
    #[error(
        "member {path:?} (header at offset {offset}) is a {kind}; checkpoint archives hold no links and links are how tar archives escape"
    )]
    LinkMember {
        /// The path.
        path: String,
        /// `hard link` or `symbolic link`.
        kind: &'static str,
        /// Offset of the member's header.
        offset: u64,
    },
    /// A character/block device or FIFO member.
    #[error(
        "member {path:?} (header at offset {offset}) is a {kind}; checkpoint archives hold only files and directories"
    )]
    SpecialMember {
        /// The path.
        path: String,
        /// `character device`, `block device` or `FIFO`.
        kind: &'static str,
        /// Offset of the member's header.
        offset: u64,
    },
    /// A GNU sparse member (typeflag `S` or `GNU.sparse.*` PAX records).
    #[error(
        "member {path:?} (header at offset {offset}) is a sparse file; sparse members are not accepted"
    )]
    SparseMember {
        /// The path.
        path: String,
        /// Offset of the member's header.
        offset: u64,
    },
    /// A typeflag the inspector does not know.
    #[error(
        "the header at offset {offset} has unknown type flag {typeflag:?}; only files, directories and PAX/GNU long-name headers are accepted"
    )]
    UnknownMemberType {
        /// The type flag byte, as a character.
        typeflag: char,
        /// Offset of the header.
        offset: u64,
    },
    /// A PAX global header (`g`): rejected, because parsers disagree on whether it applies.
    #[error(
        "the header at offset {offset} is a PAX global header; global headers are rejected because tar readers disagree on how they apply"
    )]
    PaxGlobalHeader {
        /// Offset of the header.
        offset: u64,
    },
    /// A PAX or GNU extension header larger than the limit (checked before reading it).
    #[error(
        "the {kind} header at offset {offset} declares {size} bytes of data, over the limit of {limit} bytes"
    )]
    ExtensionHeaderTooLarge {
        /// `PAX` or `GNU long name` / `GNU long link`.
        kind: &'static str,
        /// Declared size.
        size: u64,
        /// The limit.
        limit: u64,
        /// Offset of the header.
        offset: u64,
    },
    /// Extension headers in an ambiguous order (`x` then `L`, two `x` or two `L` in a row,
    /// or an extension header not followed by a member).
    #[error(
        "the {second} header at offset {offset} follows a {first} header; this sequence is ambiguous (readers disagree which member the extension applies to)"
    )]
    ExtensionSequence {
        /// The pending extension header kind.
        first: &'static str,
        /// The header kind that followed it.
        second: &'static str,
        /// Offset of the second header.
        offset: u64,
    },
    /// A PAX extended header whose records do not parse strictly.
    #[error("the PAX header at offset {offset} is malformed: {reason}")]
    PaxMalformed {
        /// What is wrong.
        reason: String,
        /// Offset of the PAX header.
        offset: u64,
    },
    /// The ustar size field and the PAX `size` record disagree.
    #[error(
        "member {path:?} (header at offset {offset}): the ustar header says {ustar_size} bytes but the PAX record says {pax_size}; readers would disagree where the next member starts"
    )]
    SizeConflict {
        /// The path.
        path: String,
        /// Size in the ustar header.
        ustar_size: u64,
        /// Size in the PAX record.
        pax_size: u64,
        /// Offset of the member's header.
        offset: u64,
    },
    /// A directory header that declares data.
    #[error(
        "directory {path:?} (header at offset {offset}) declares {size} bytes of data; readers disagree whether to skip it"
    )]
    DirectoryWithData {
        /// The path.
        path: String,
        /// Declared size.
        size: u64,
        /// Offset of the header.
        offset: u64,
    },
    /// The archive ends before a header or a member's data does.
    #[error(
        "the archive is truncated: {what} at offset {offset} needs {needed} bytes but the stream ends first"
    )]
    Truncated {
        /// What was being read.
        what: String,
        /// Where it starts.
        offset: u64,
        /// How many bytes it needs.
        needed: u64,
    },
    /// The archive ends without the two zero blocks that mark its end.
    #[error(
        "the archive ends at offset {offset} without an end-of-archive marker; it may be truncated"
    )]
    MissingEndMarker {
        /// Where the stream ended.
        offset: u64,
    },
    /// A single zero block followed by more headers.
    #[error(
        "a lone zero block at offset {offset} is followed by more data; readers disagree whether the archive ends there"
    )]
    LoneZeroBlock {
        /// Offset of the zero block.
        offset: u64,
    },
    /// A header whose checksum does not match.
    #[error(
        "the header at offset {offset} has a bad checksum (recorded {recorded}, computed {computed}); the archive is corrupt or not a tar"
    )]
    BadChecksum {
        /// Offset of the header.
        offset: u64,
        /// Checksum in the header (None when unparseable).
        recorded: String,
        /// Checksum computed over the header.
        computed: u32,
    },
    /// A header field that does not parse (size, magic).
    #[error("the header at offset {offset} is malformed: {reason}")]
    BadHeader {
        /// What is wrong.
        reason: String,
        /// Offset of the header.
        offset: u64,
    },
    /// A path that appears twice.
    #[error(
        "member {path:?} appears twice (second time at offset {offset}); readers disagree which copy wins"
    )]
    DuplicateMember {
        /// The normalised path.
        path: String,
        /// Offset of the second header.
        offset: u64,
    },
    /// More members than the limit.
    #[error("the archive has more than {limit} members (limit reached at offset {offset})")]
    TooManyEntries {
        /// The limit.
        limit: u64,
        /// Offset of the header over the limit.
        offset: u64,
    },
    /// Member paths add up to more bytes than the limit.
    #[error("member paths add up to more than {limit} bytes (limit reached at offset {offset})")]
    PathsTooLarge {
        /// The limit.
        limit: u64,
        /// Offset of the header over the limit.
        offset: u64,
    },
    /// A JSON member larger than the limit.
    #[error("member {member:?} is {size} bytes, over the JSON limit of {limit} bytes")]
    JsonTooLarge {
        /// The member.
        member: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A JSON member nested deeper than the limit.
    #[error("member {member:?} nests JSON deeper than {limit} levels (at byte {at})")]
    JsonTooDeep {
        /// The member (or member and field).
        member: String,
        /// The limit.
        limit: usize,
        /// Byte offset in the JSON where the limit was exceeded.
        at: usize,
    },
    /// A JSON member that is not the JSON the inspector expects.
    #[error("member {member:?} is not valid JSON of the expected shape: {reason}")]
    JsonInvalid {
        /// The member (or member and field).
        member: String,
        /// The parser's message.
        reason: String,
    },
    /// Inspection took longer than the deadline.
    #[error("inspection took longer than its deadline of {limit:?} (stopped at offset {offset})")]
    Timeout {
        /// The deadline.
        limit: Duration,
        /// Offset in the tar stream when the clock ran out.
        offset: u64,
    },
    /// More decompressed bytes than the limit (a decompression bomb, or a limit too low).
    #[error(
        "the archive decompresses to more than {limit} bytes; stopped (raise the limit if this archive is genuine)"
    )]
    DecompressedTooLarge {
        /// The limit.
        limit: u64,
    },
    /// A zstd frame asking for a window over 128 MiB.
    #[error("the zstd stream asks for a decompression window over 128 MiB; refused ({detail})")]
    ZstdWindowTooLarge {
        /// The decoder's message.
        detail: String,
    },
    /// The compressed stream is corrupt.
    #[error("the {format} stream is corrupt: {detail}")]
    Decompress {
        /// `gzip` or `zstd`.
        format: &'static str,
        /// The decoder's message.
        detail: String,
    },
    /// Two identity sources disagree.
    #[error(
        "the archive names two different values for {field}: {first:?} ({first_source}) and {second:?} ({second_source})"
    )]
    IdentityConflict {
        /// `namespace`, `pod` or `container`.
        field: &'static str,
        /// First value.
        first: String,
        /// Where it came from.
        first_source: &'static str,
        /// Second value.
        second: String,
        /// Where it came from.
        second_source: &'static str,
    },
    /// A tar without config.dump, spec.dump, checkpoint/inventory.img and
    /// checkpoint/pstree.img.
    #[error(
        "this tar archive has no config.dump, spec.dump, checkpoint/inventory.img or checkpoint/pstree.img: it is not a container checkpoint"
    )]
    NotACheckpoint,
    /// A CRIU image we read is larger than the limit.
    #[error("CRIU image {member:?} is {size} bytes, over the limit of {limit} bytes")]
    CriuImageTooLarge {
        /// The member.
        member: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A CRIU image that does not parse.
    #[error("CRIU image {member:?} is malformed: {reason}")]
    CriuMalformed {
        /// The member.
        member: String,
        /// What is wrong.
        reason: String,
    },
    /// More processes (or core images) than the limit.
    #[error("the CRIU images describe more than {limit} processes")]
    TooManyProcesses {
        /// The limit.
        limit: usize,
    },
    /// A tar archive inside the archive (`rootfs-diff.tar`) broke a rule; offsets are
    /// within that inner archive.
    #[error("in {member}: {source}")]
    Nested {
        /// The member holding the inner archive.
        member: String,
        /// What was wrong inside it.
        source: Box<InspectError>,
    },
    /// A JSON list member (`deleted.files`) that is not what it should be.
    #[error("{member} is malformed: {reason}")]
    ListMalformed {
        /// The member.
        member: String,
        /// What is wrong.
        reason: String,
    },
}

impl InspectError {
    /// A short, stable, kebab-case reason code for this rejection (stored in manifests).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Io(_) => "io",
            Self::AbsolutePath { .. } => "absolute-path",
            Self::DotDotPath { .. } => "dot-dot-path",
            Self::EmptyPath { .. } => "empty-path",
            Self::NulInPath { .. } => "nul-in-path",
            Self::PathEncoding { .. } => "path-not-utf8",
            Self::LinkMember { .. } => "link-member",
            Self::SpecialMember { .. } => "special-member",
            Self::SparseMember { .. } => "sparse-member",
            Self::UnknownMemberType { .. } => "unknown-member-type",
            Self::PaxGlobalHeader { .. } => "pax-global-header",
            Self::ExtensionHeaderTooLarge { .. } => "extension-header-too-large",
            Self::ExtensionSequence { .. } => "extension-sequence",
            Self::PaxMalformed { .. } => "pax-malformed",
            Self::SizeConflict { .. } => "size-conflict",
            Self::DirectoryWithData { .. } => "directory-with-data",
            Self::Truncated { .. } => "truncated",
            Self::MissingEndMarker { .. } => "missing-end-marker",
            Self::LoneZeroBlock { .. } => "lone-zero-block",
            Self::BadChecksum { .. } => "bad-checksum",
            Self::BadHeader { .. } => "bad-header",
            Self::DuplicateMember { .. } => "duplicate-member",
            Self::TooManyEntries { .. } => "too-many-entries",
            Self::PathsTooLarge { .. } => "paths-too-large",
            Self::JsonTooLarge { .. } => "json-too-large",
            Self::JsonTooDeep { .. } => "json-too-deep",
            Self::JsonInvalid { .. } => "json-invalid",
            Self::Timeout { .. } => "timeout",
            Self::DecompressedTooLarge { .. } => "decompressed-too-large",
            Self::ZstdWindowTooLarge { .. } => "zstd-window-too-large",
            Self::Decompress { .. } => "decompress-failed",
            Self::IdentityConflict { .. } => "identity-conflict",
            Self::NotACheckpoint => "not-a-checkpoint",
            Self::CriuImageTooLarge { .. } => "criu-image-too-large",
            Self::CriuMalformed { .. } => "criu-malformed",
            Self::TooManyProcesses { .. } => "too-many-processes",
            Self::Nested { source, .. } => source.code(),
            Self::ListMalformed { .. } => "list-malformed",
        }
    }
}
