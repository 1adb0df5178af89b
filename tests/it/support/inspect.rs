//! Test support for the inspector: a tiny tar writer that can also write the hostile
//! headers real tar writers refuse to, CRIU image encoders, and synthetic checkpoint
//! archives in the CRI-O, containerd and Podman layouts.

use std::io::Write;

/// Size of a tar block.
pub const BLOCK: usize = 512;

/// Which engine's layout a synthetic checkpoint follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// CRI-O: annotations plus the `io.kubernetes.cri-o.Labels` JSON annotation.
    CriO,
    /// containerd: `io.kubernetes.cri.*` annotations.
    Containerd,
    /// Podman with Kubernetes annotations, its spec copied into config.dump.
    Podman,
}

/// A 512-byte header under construction.
#[derive(Clone)]
pub struct Header {
    /// The raw block (checksum filled by [`Header::finish`]).
    pub block: [u8; BLOCK],
}

impl Header {
    /// A POSIX ustar header (`ustar\0` `00`).
    pub fn ustar(name: &[u8], typeflag: u8, size: u64) -> Self {
        let mut h = Self { block: [0; BLOCK] };
        h.set_name(name);
        h.put(100, b"0000644\0");
        h.put(108, b"0000000\0");
        h.put(116, b"0000000\0");
        h.set_size(size);
        h.put(136, b"15045410000\0");
        h.block[156] = typeflag;
        h.put(257, b"ustar\x0000");
        h
    }

    /// A GNU header (`ustar  \0`).
    pub fn gnu(name: &[u8], typeflag: u8, size: u64) -> Self {
        let mut h = Self::ustar(name, typeflag, size);
        h.put(257, b"ustar  \0");
        h
    }

    /// Writes bytes at an offset.
    pub fn put(&mut self, at: usize, bytes: &[u8]) -> &mut Self {
        self.block[at..at + bytes.len()].copy_from_slice(bytes);
        self
    }

    /// Sets the name field (at most 100 bytes).
    pub fn set_name(&mut self, name: &[u8]) -> &mut Self {
        self.block[..100].fill(0);
        self.put(0, name)
    }

    /// Sets the ustar prefix field.
    pub fn set_prefix(&mut self, prefix: &[u8]) -> &mut Self {
        self.put(345, prefix)
    }

    /// Sets the size as 11 octal digits (or base-256 when too large).
    pub fn set_size(&mut self, size: u64) -> &mut Self {
        if size < (1 << 33) {
            let s = format!("{size:011o}\0");
            self.put(124, s.as_bytes())
        } else {
            let mut f = [0u8; 12];
            f[0] = 0x80;
            f[4..].copy_from_slice(&size.to_be_bytes());
            self.put(124, &f)
        }
    }

    /// Fills in the checksum and returns the block.
    pub fn finish(&mut self) -> [u8; BLOCK] {
        self.block[148..156].fill(b' ');
        let sum: u32 = self.block.iter().map(|&b| u32::from(b)).sum();
        let s = format!("{sum:06o}\0 ");
        self.block[148..156].copy_from_slice(s.as_bytes());
        self.block
    }
}

/// Writes tar streams, including broken ones.
#[derive(Default, Clone)]
pub struct Tar {
    /// The bytes so far.
    pub buf: Vec<u8>,
}

fn pad(buf: &mut Vec<u8>) {
    let rem = buf.len() % BLOCK;
    if rem != 0 {
        buf.resize(buf.len() + BLOCK - rem, 0);
    }
}

/// A PAX record `"LEN key=value\n"`.
pub fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body_len = 1 + key.len() + 1 + value.len() + 1;
    let mut n = body_len + 1;
    while n.to_string().len() + body_len != n {
        n += 1;
    }
    let mut out = format!("{n} {key}=").into_bytes();
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

impl Tar {
    /// An empty stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a header block as is.
    pub fn header(&mut self, mut h: Header) -> &mut Self {
        let b = h.finish();
        self.buf.extend_from_slice(&b);
        self
    }

    /// Appends raw bytes (then pads to a block).
    pub fn data(&mut self, data: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(data);
        pad(&mut self.buf);
        self
    }

    /// A regular file.
    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.header(Header::ustar(name.as_bytes(), b'0', data.len() as u64))
            .data(data)
    }

    /// A directory.
    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.header(Header::ustar(name.as_bytes(), b'5', 0))
    }

    /// A header-only member of any type.
    pub fn typed(&mut self, name: &str, typeflag: u8, link: &str) -> &mut Self {
        let mut h = Header::ustar(name.as_bytes(), typeflag, 0);
        h.put(157, link.as_bytes());
        self.header(h)
    }

    /// A PAX `x` header holding the records.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut data = Vec::new();
        for (k, v) in records {
            data.extend(pax_record(k, v));
        }
        self.header(Header::ustar(b"PaxHeaders/x", b'x', data.len() as u64))
            .data(&data)
    }

    /// A GNU `L` long-name header.
    pub fn long_name(&mut self, name: &str) -> &mut Self {
        let mut data = name.as_bytes().to_vec();
        data.push(0);
        self.header(Header::gnu(b"././@LongLink", b'L', data.len() as u64))
            .data(&data)
    }

    /// The bytes with an end marker appended.
    pub fn finish(&self) -> Vec<u8> {
        let mut b = self.buf.clone();
        b.extend_from_slice(&[0u8; 2 * BLOCK]);
        b
    }
}

/// Protobuf varint.
pub fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn pb_varint(field: u32, v: u64, out: &mut Vec<u8>) {
    varint(u64::from(field) << 3, out);
    varint(v, out);
}

fn pb_bytes(field: u32, v: &[u8], out: &mut Vec<u8>) {
    varint((u64::from(field) << 3) | 2, out);
    varint(v.len() as u64, out);
    out.extend_from_slice(v);
}

/// A CRIU image: the two magics, then u32-LE-length-prefixed entries.
pub fn criu_image(magic: u32, entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out = 0x5456_4319u32.to_le_bytes().to_vec();
    out.extend_from_slice(&magic.to_le_bytes());
    for e in entries {
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(e);
    }
    out
}

/// `pstree.img` for (pid, ppid, thread ids); threads are written packed for odd pids.
pub fn pstree_img(procs: &[(u32, u32, &[u32])]) -> Vec<u8> {
    let entries: Vec<Vec<u8>> = procs
        .iter()
        .map(|&(pid, ppid, threads)| {
            let mut e = Vec::new();
            pb_varint(1, pid.into(), &mut e);
            pb_varint(2, ppid.into(), &mut e);
            pb_varint(3, pid.into(), &mut e);
            pb_varint(4, 1, &mut e);
            if pid % 2 == 1 {
                let mut packed = Vec::new();
                for &t in threads {
                    varint(t.into(), &mut packed);
                }
                pb_bytes(5, &packed, &mut e);
            } else {
                for &t in threads {
                    pb_varint(5, t.into(), &mut e);
                }
            }
            e
        })
        .collect();
    criu_image(0x5027_3030, &entries)
}

/// `core-<pid>.img` with `tc.comm` (plus unknown fields around it, as CRIU writes).
pub fn core_img(comm: &str) -> Vec<u8> {
    let mut tc = Vec::new();
    pb_varint(1, 1, &mut tc); // task_state
    pb_varint(2, 0, &mut tc); // exit_code
    pb_varint(4, 0x40_0100, &mut tc); // flags
    pb_varint(5, 0, &mut tc); // blk_sigset
    pb_bytes(6, comm.as_bytes(), &mut tc);
    pb_varint(7, 3, &mut tc);
    let mut core = Vec::new();
    pb_varint(1, 1, &mut core); // mtype X86_64
    pb_bytes(2, &[0x08, 0x01, 0x12, 0x00], &mut core); // thread_info (opaque here)
    pb_bytes(3, &tc, &mut core);
    criu_image(0x5505_3847, &[core])
}

/// Identity of a synthetic checkpoint.
#[derive(Clone)]
pub struct Ident {
    /// Namespace.
    pub ns: String,
    /// Pod.
    pub pod: String,
    /// Container.
    pub ctr: String,
}

impl Ident {
    /// The usual test identity.
    pub fn new(ns: &str, pod: &str, ctr: &str) -> Self {
        Self {
            ns: ns.into(),
            pod: pod.into(),
            ctr: ctr.into(),
        }
    }
}

/// Container ID used by the synthetic archives.
pub const CTR_ID: &str = "65016e90e69a13f90000929d51e7a64ee8d75a464c631eccf6d79ffb445eaabb";

/// The annotations of `spec.dump` for a layout.
pub fn annotations(layout: Layout, id: &Ident) -> serde_json::Value {
    use serde_json::json;
    match layout {
        Layout::CriO => {
            let labels = json!({
                "io.kubernetes.pod.namespace": id.ns,
                "io.kubernetes.pod.name": id.pod,
                "io.kubernetes.container.name": id.ctr,
                "io.kubernetes.pod.uid": "0f0e0d0c-0b0a-0908-0706-050403020100",
            });
            json!({
                "io.container.manager": "cri-o",
                "io.kubernetes.pod.namespace": id.ns,
                "io.kubernetes.pod.name": id.pod,
                "io.kubernetes.container.name": id.ctr,
                "io.kubernetes.cri-o.Labels": labels.to_string(),
                "io.kubernetes.cri-o.ContainerID": CTR_ID,
            })
        }
        Layout::Containerd => json!({
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-namespace": id.ns,
            "io.kubernetes.cri.sandbox-name": id.pod,
            "io.kubernetes.cri.container-name": id.ctr,
            "io.kubernetes.cri.image-name": "registry.example/app:1.2",
        }),
        Layout::Podman => json!({
            "io.container.manager": "libpod",
            "io.kubernetes.pod.namespace": id.ns,
            "io.kubernetes.pod.name": id.pod,
            "io.kubernetes.container.name": id.ctr,
        }),
    }
}

/// `spec.dump` bytes for a layout.
pub fn spec_dump(layout: Layout, id: &Ident) -> Vec<u8> {
    serde_json::to_vec_pretty(&serde_json::json!({
        "ociVersion": "1.2.0",
        "process": {"args": ["/bin/memhog", "64"], "cwd": "/"},
        "root": {"path": "rootfs"},
        "annotations": annotations(layout, id),
    }))
    .unwrap()
}

/// `config.dump` bytes for a layout.
pub fn config_dump(layout: Layout, id: &Ident) -> Vec<u8> {
    use serde_json::json;
    let v = match layout {
        Layout::CriO => json!({
            "id": CTR_ID,
            "name": format!("k8s_{}_{}_{}_uid_0", id.ctr, id.pod, id.ns),
            "rootfsImage": "registry.example/app:1.2",
            "rootfsImageRef": "sha256:639594076718fcc2138e1ef9bf9f12d1127d271d9811eb751f5905fd66e5626f",
            "rootfsImageName": "registry.example/app:1.2",
            "runtime": "runc",
            "createdTime": "2026-11-28T08:20:04.997215058Z",
            "checkpointedTime": "2026-11-28T08:21:00Z",
        }),
        Layout::Containerd => json!({
            "id": CTR_ID,
            "name": id.ctr,
            "rootfsImage": "registry.example/app:1.2",
            "rootfsImageRef": "sha256:639594076718fcc2138e1ef9bf9f12d1127d271d9811eb751f5905fd66e5626f",
            "rootfsImageName": "registry.example/app:1.2",
            "runtime": "io.containerd.runc.v2",
            "createdTime": "2026-11-28T08:20:04Z",
            "checkpointedTime": "2026-11-28T08:21:00Z",
        }),
        Layout::Podman => json!({
            "spec": {"ociVersion": "1.2.0", "annotations": {
                "io.kubernetes.pod.namespace": id.ns,
                "io.kubernetes.pod.name": id.pod,
                "io.kubernetes.container.name": id.ctr,
            }},
            "id": CTR_ID,
            "name": id.ctr,
            "rootfsImageID": "639594076718fcc2138e1ef9bf9f12d1127d271d9811eb751f5905fd66e5626f",
            "rootfsImageName": "registry.example/app:1.2",
            "runtime": "crun",
            "createdTime": "2026-11-28T08:20:04.997215058Z",
            "shmSize": 65536000,
            "mounts": [{"destination": "/dev/shm"}],
        }),
    };
    serde_json::to_vec_pretty(&v).unwrap()
}

/// Size of the synthetic `pages-1.img`.
pub const PAGES_BYTES: usize = 3 * 4096;

/// A synthetic checkpoint: two processes (memhog pid 1 with 2 threads, worker pid 7),
/// pages, rootfs-diff and the layout's extra members. Pstree comes after the core images.
pub fn checkpoint_with(layout: Layout, id: &Ident, spec: &[u8], config: &[u8]) -> Tar {
    let mut t = Tar::new();
    if layout == Layout::Podman {
        t.dir("artifacts/");
    }
    t.file("config.dump", config);
    t.file("spec.dump", spec);
    match layout {
        Layout::CriO => {
            t.file("bind.mounts", b"[]");
            t.file("io.kubernetes.cri-o.LogPath", b"log line\n");
        }
        Layout::Containerd => {
            t.file("status", b"{}");
            t.file("container.log", b"");
        }
        Layout::Podman => {
            t.file("ctr.log", b"ready\n");
        }
    }
    t.dir("checkpoint/");
    t.file("checkpoint/core-1.img", &core_img("memhog"));
    t.file(
        "checkpoint/core-2.img",
        &criu_image(0x5505_3847, &[vec![0x08, 0x01]]),
    );
    t.file("checkpoint/core-7.img", &core_img("worker"));
    t.file(
        "checkpoint/inventory.img",
        &[0x16, 0x31, 0x31, 0x58, 0, 0, 0, 0],
    );
    t.file("checkpoint/pages-1.img", &vec![0xa5u8; PAGES_BYTES]);
    t.file(
        "checkpoint/pstree.img",
        &pstree_img(&[(1, 0, &[1, 2]), (7, 1, &[7])]),
    );
    let _ = id;
    t.file("rootfs-diff.tar", &[0u8; 1024]);
    t.file("stats-dump", b"{}");
    t
}

/// The standard synthetic checkpoint of a layout (tar bytes, end marker included).
pub fn checkpoint(layout: Layout, id: &Ident) -> Vec<u8> {
    checkpoint_with(layout, id, &spec_dump(layout, id), &config_dump(layout, id)).finish()
}

/// gzip-compresses.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// zstd-compresses.
pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 1).unwrap()
}

/// A block of a hand-made zstd frame.
pub enum ZBlock {
    /// Raw (stored) bytes.
    Raw(Vec<u8>),
    /// One byte repeated `n` times (n <= 128 KiB).
    Rle(u8, u32),
}

/// A zstd frame written by hand: no content size, no checksum, the window given as a
/// log2 (10..=41), then the blocks. Lets tests ask for any window and build bombs of any
/// size in a few KiB without compressing anything.
pub fn zstd_frame(window_log: u8, blocks: &[ZBlock]) -> Vec<u8> {
    let mut out = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, (window_log - 10) << 3];
    for (i, b) in blocks.iter().enumerate() {
        let last = u32::from(i + 1 == blocks.len());
        let (kind, size, body): (u32, u32, Vec<u8>) = match b {
            ZBlock::Raw(d) => (0, d.len() as u32, d.clone()),
            ZBlock::Rle(byte, n) => (1, *n, vec![*byte]),
        };
        let h = (size << 3) | (kind << 1) | last;
        out.extend_from_slice(&h.to_le_bytes()[..3]);
        out.extend_from_slice(&body);
    }
    out
}

/// Raw blocks of at most 128 KiB covering `data`.
pub fn raw_blocks(data: &[u8]) -> Vec<ZBlock> {
    data.chunks(128 * 1024)
        .map(|c| ZBlock::Raw(c.to_vec()))
        .collect()
}

/// A reader that serves `head` and then `zeros` zero bytes, counting what it served.
pub struct ZeroTail {
    /// The prefix.
    pub head: Vec<u8>,
    /// Zero bytes after the prefix.
    pub zeros: u64,
    /// Bytes served so far.
    pub served: std::rc::Rc<std::cell::Cell<u64>>,
}

impl std::io::Read for ZeroTail {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let pos = self.served.get();
        let head_len = self.head.len() as u64;
        let n = if pos < head_len {
            let rest = &self.head[pos as usize..];
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            n
        } else {
            let left = (head_len + self.zeros).saturating_sub(pos);
            let n = (buf.len() as u64).min(left) as usize;
            buf[..n].fill(0);
            n
        };
        self.served.set(pos + n as u64);
        Ok(n)
    }
}

/// What a `ckvault` child run by [`measured`] did.
pub struct Measured {
    /// How it ended.
    pub status: std::process::ExitStatus,
    /// Bytes it wrote to stdout.
    pub stdout_bytes: u64,
    /// The first [`Measured::HEAD`] bytes of its stdout.
    pub stdout: Vec<u8>,
    /// Its stderr.
    pub stderr: String,
    /// Its peak resident set (bytes), from `wait4`'s `ru_maxrss`: this child's alone.
    pub peak_rss: u64,
}

impl Measured {
    /// Most stdout bytes kept.
    pub const HEAD: usize = 64 << 20;
}

/// Forks the measured `ckvault` from a small process of its own (python3), sets its
/// address-space limit, execs it, reaps it with `wait4` and writes `STATUS MAXRSS_KIB` into
/// the file named first. Not spawned from the test process itself: Linux counts in a
/// process's `ru_maxrss` the peak of the memory image its exec replaced, and for a child of
/// the test process that is the test process's own peak (one binary runs every suite, at
/// times hundreds of MiB), not the child's.
const SPAWN_MEASURED: &str = r#"
import os, resource, sys
report, limit, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
pid = os.fork()
if pid == 0:
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        os.execv(argv[0], argv)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(report, "w") as f:
    f.write("%d %d" % (status, usage.ru_maxrss))
"#;

/// Runs the `ckvault` binary with `args` under an address-space limit of `as_limit` bytes
/// (so a test run against unbounded code fails instead of taking the machine), counts
/// what it writes to stdout (keeping the first [`Measured::HEAD`] bytes) and reads its
/// peak RSS when it is reaped (by [`SPAWN_MEASURED`]).
pub fn measured(args: &[&str], as_limit: u64) -> Measured {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    let report = tempfile::NamedTempFile::new().expect("a report file");
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(SPAWN_MEASURED)
        .arg(report.path())
        .arg(as_limit.to_string())
        .arg(super::ckvault_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3 (it runs ckvault and measures it)");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut head, mut total, mut buf) = (Vec::new(), 0u64, vec![0u8; 1 << 16]);
        loop {
            let n = out.read(&mut buf).unwrap_or(0);
            if n == 0 {
                return (head, total);
            }
            total += n as u64;
            let room = Measured::HEAD.saturating_sub(head.len()).min(n);
            head.extend_from_slice(&buf[..room]);
        }
    });
    let errs = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let spawner = child.wait().expect("wait for python3");
    let (stdout, stdout_bytes) = reader.join().unwrap();
    let stderr = errs.join().unwrap();
    let text = std::fs::read_to_string(report.path()).unwrap_or_default();
    let mut fields = text.split(' ').map(str::parse::<i64>);
    let (Some(Ok(status)), Some(Ok(maxrss_kib))) = (fields.next(), fields.next()) else {
        panic!("python3 did not report on ckvault ({spawner}): {stderr}");
    };
    Measured {
        status: std::process::ExitStatus::from_raw(status as i32),
        stdout_bytes,
        stdout,
        stderr,
        peak_rss: maxrss_kib as u64 * 1024,
    }
}
