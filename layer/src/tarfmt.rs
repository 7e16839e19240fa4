//! A streaming tar reader for hostile input (ustar, GNU, PAX incl. long names, xattrs and sparse
//! files) and the small PAX writer that `compute` needs.
//!
//! The reader never allocates more than a bounded amount per header (PAX and GNU long-name
//! payloads are capped at 1 MiB like Go's archive/tar), never trusts a size it cannot represent,
//! and reports every malformation as `Error::invalid("invalid archive: …")`.

use std::io::Write;

use super::stream::ChunkSource;
use berth_errdefs::{Error, Result};

pub(crate) const BLOCK: usize = 512;
/// Cap for PAX records, GNU long names and sparse maps (Go's `maxSpecialFileSize`).
const MAX_META: u64 = 1 << 20;
/// Cap on the segments of one sparse file; real sparse files have a handful.
const MAX_SPARSE: usize = 1 << 16;
/// Names and link targets beyond PATH_MAX are not something a real image contains, and refusing
/// them bounds directory depth (and so fds and memory) during resolution.
pub(crate) const MAX_PATH: usize = 4096;

pub(crate) fn invalid(msg: impl std::fmt::Display) -> Error {
    Error::invalid(format!("invalid archive: {msg}"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Regular,
    Link,
    Symlink,
    Char,
    Block,
    Dir,
    Fifo,
}

/// A time as (seconds, nanoseconds) since the epoch.
pub(crate) type Time = (i64, u32);

#[derive(Debug)]
pub(crate) struct Entry {
    pub name: Vec<u8>,
    pub linkname: Vec<u8>,
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky (`& 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Logical file size (for sparse files: the expanded size).
    pub size: u64,
    pub mtime: Time,
    pub atime: Option<Time>,
    pub devmajor: u32,
    pub devminor: u32,
    /// `SCHILY.xattr.*` records, prefix stripped, in archive order.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Data segments (offset, length) of a sparse file; `None` for a dense file.
    pub sparse: Option<Vec<(u64, u64)>>,
}

/// Sequential reader; `next` skips whatever the caller left unread of the previous entry.
pub(crate) struct TarReader<'s> {
    src: &'s mut ChunkSource,
    /// Unread data bytes of the current entry, then its padding.
    data_left: u64,
    pad_left: u64,
    pub entries: u64,
    max_entries: u64,
    done: bool,
}

#[derive(Default)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<Time>,
    atime: Option<Time>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    sparse_major: Option<Vec<u8>>,
    sparse_minor: Option<Vec<u8>>,
    sparse_name: Option<Vec<u8>>,
    sparse_realsize: Option<u64>,
    sparse_map: Option<Vec<u8>>,
    /// PAX 0.0: repeated offset/numbytes records.
    sparse_pairs: Vec<u64>,
}

impl<'s> TarReader<'s> {
    pub(crate) fn new(src: &'s mut ChunkSource, max_entries: u64) -> Self {
        TarReader {
            src,
            data_left: 0,
            pad_left: 0,
            entries: 0,
            max_entries,
            done: false,
        }
    }

    /// Read exactly one block; `None` on a clean EOF before its first byte.
    fn block(&mut self) -> Result<Option<[u8; BLOCK]>> {
        let mut b = [0u8; BLOCK];
        let mut n = 0;
        while n < BLOCK {
            let avail = self.src.fill()?;
            if avail.is_empty() {
                if n == 0 {
                    return Ok(None);
                }
                return Err(invalid("unexpected end of stream inside a header"));
            }
            let k = avail.len().min(BLOCK - n);
            b[n..n + k].copy_from_slice(&avail[..k]);
            self.src.consume(k);
            n += k;
        }
        Ok(Some(b))
    }

    /// Skip `n` bytes of the stream; truncation is an error.
    fn skip(&mut self, mut n: u64) -> Result<()> {
        while n > 0 {
            let avail = self.src.fill()?;
            if avail.is_empty() {
                return Err(invalid("unexpected end of stream inside an entry"));
            }
            let k = (avail.len() as u64).min(n) as usize;
            self.src.consume(k);
            n -= k as u64;
        }
        Ok(())
    }

    /// Read a whole (small, bounded) payload of `size` bytes plus its padding.
    fn payload(&mut self, size: u64, what: &str) -> Result<Vec<u8>> {
        if size > MAX_META {
            return Err(invalid(format!(
                "{what} of {size} bytes exceeds {MAX_META}"
            )));
        }
        let mut v = Vec::with_capacity(size as usize);
        let mut n = size;
        while n > 0 {
            let avail = self.src.fill()?;
            if avail.is_empty() {
                return Err(invalid(format!("unexpected end of stream inside {what}")));
            }
            let k = (avail.len() as u64).min(n) as usize;
            v.extend_from_slice(&avail[..k]);
            self.src.consume(k);
            n -= k as u64;
        }
        self.skip(padding(size))?;
        Ok(v)
    }

    /// Hand the current entry's data to `sink` in chunks, `n` bytes at most.
    pub(crate) fn read_data(
        &mut self,
        mut n: u64,
        mut sink: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        if n > self.data_left {
            return Err(invalid("entry data shorter than its header says"));
        }
        while n > 0 {
            let avail = self.src.fill()?;
            if avail.is_empty() {
                return Err(invalid("unexpected end of stream inside file data"));
            }
            let k = (avail.len() as u64).min(n) as usize;
            sink(&avail[..k])?;
            self.src.consume(k);
            n -= k as u64;
            self.data_left -= k as u64;
        }
        Ok(())
    }

    /// Skip the rest of the current entry's data and padding.
    fn finish_entry(&mut self) -> Result<()> {
        let n = self.data_left.saturating_add(self.pad_left);
        self.data_left = 0;
        self.pad_left = 0;
        self.skip(n)
    }

    /// After the end-of-archive marker: drain the stream (it is part of the digest, as in
    /// containerd) but refuse anything other than zero padding.
    pub(crate) fn drain_trailer(&mut self) -> Result<()> {
        loop {
            let avail = self.src.fill()?;
            if avail.is_empty() {
                return Ok(());
            }
            if avail.iter().any(|&b| b != 0) {
                return Err(invalid("trailing data after the end-of-archive marker"));
            }
            let k = avail.len();
            self.src.consume(k);
        }
    }

    /// The next real entry, or `None` at the end of the archive.
    pub(crate) fn next(&mut self) -> Result<Option<Entry>> {
        if self.done {
            return Ok(None);
        }
        self.finish_entry()?;
        let mut pax = Pax::default();
        let mut have_meta = false;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        loop {
            let Some(b) = self.block()? else {
                if have_meta {
                    return Err(invalid("unexpected end of stream after an extended header"));
                }
                // Go's reader accepts an archive that just stops at a header boundary.
                self.done = true;
                return Ok(None);
            };
            if b.iter().all(|&x| x == 0) {
                // One zero block, then either EOF or a second zero block, is the end.
                match self.block()? {
                    None => {}
                    Some(b2) if b2.iter().all(|&x| x == 0) => {}
                    Some(_) => return Err(invalid("non-zero block after a zero block")),
                }
                if have_meta {
                    return Err(invalid("end of archive after an extended header"));
                }
                self.done = true;
                return Ok(None);
            }
            verify_checksum(&b)?;
            let typeflag = b[156];
            let size = parse_numeric(&b[124..136], "size")?;
            let size = u64::try_from(size).map_err(|_| invalid("negative entry size"))?;
            match typeflag {
                b'x' => {
                    let data = self.payload(size, "PAX header")?;
                    parse_pax(&data, &mut pax)?;
                    have_meta = true;
                }
                b'g' => {
                    // Global PAX headers are ignored (Go returns them, containerd skips them).
                    self.skip(size.saturating_add(padding(size)))?;
                }
                b'L' => {
                    long_name = Some(trim_nul(&self.payload(size, "GNU long name")?).to_vec());
                    have_meta = true;
                }
                b'K' => {
                    long_link = Some(trim_nul(&self.payload(size, "GNU long link")?).to_vec());
                    have_meta = true;
                }
                _ => {
                    self.entries += 1;
                    if self.entries > self.max_entries {
                        return Err(Error::invalid(format!(
                            "layer exceeds the limit of {} entries",
                            self.max_entries
                        )));
                    }
                    return self
                        .entry(&b, typeflag, size, pax, long_name, long_link)
                        .map(Some);
                }
            }
        }
    }

    fn entry(
        &mut self,
        b: &[u8; BLOCK],
        typeflag: u8,
        hdr_size: u64,
        pax: Pax,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
    ) -> Result<Entry> {
        let magic = &b[257..265];
        let ustar = &magic[..6] == b"ustar\0";
        let gnu = magic == b"ustar  \0";
        let mut name = trim_nul(&b[0..100]).to_vec();
        if ustar {
            // POSIX ustar splits long names into prefix/name; star has a shorter prefix.
            let prefix = if &b[508..512] == b"tar\0" {
                trim_nul(&b[345..476])
            } else {
                trim_nul(&b[345..500])
            };
            if !prefix.is_empty() {
                let mut full = prefix.to_vec();
                full.push(b'/');
                full.extend_from_slice(&name);
                name = full;
            }
        }
        if let Some(n) = long_name {
            name = n;
        }
        if let Some(p) = pax.path.clone() {
            name = p;
        }
        let mut linkname = trim_nul(&b[157..257]).to_vec();
        if let Some(l) = long_link {
            linkname = l;
        }
        if let Some(l) = pax.linkpath.clone() {
            linkname = l;
        }

        let mode = parse_numeric(&b[100..108], "mode")?;
        let mode = (u32::try_from(mode & 0o7777).unwrap_or(0)) & 0o7777;
        let uid = pax
            .uid
            .map(Ok)
            .unwrap_or_else(|| nonneg(parse_numeric(&b[108..116], "uid")?, "uid"))?;
        let gid = pax
            .gid
            .map(Ok)
            .unwrap_or_else(|| nonneg(parse_numeric(&b[116..124], "gid")?, "gid"))?;
        let uid = id32(uid, "uid")?;
        let gid = id32(gid, "gid")?;
        let mtime = match pax.mtime {
            Some(t) => t,
            None => (parse_numeric(&b[136..148], "mtime")?, 0),
        };
        let atime = match pax.atime {
            Some(t) => Some(t),
            None if gnu => {
                let a = parse_numeric(&b[345..357], "atime")?;
                (a != 0).then_some((a, 0))
            }
            None => None,
        };
        let mut size = pax.size.unwrap_or(hdr_size);

        let kind = match typeflag {
            b'0' | b'7' => Kind::Regular,
            // Legacy (V7) archives mark directories with a trailing slash only.
            0 if name.ends_with(b"/") => Kind::Dir,
            0 => Kind::Regular,
            b'S' => Kind::Regular,
            b'1' => Kind::Link,
            b'2' => Kind::Symlink,
            b'3' => Kind::Char,
            b'4' => Kind::Block,
            b'5' => Kind::Dir,
            b'6' => Kind::Fifo,
            t => {
                return Err(invalid(format!(
                    "unhandled tar header type {t} ({:?})",
                    char::from(t)
                )))
            }
        };
        let (devmajor, devminor) = if matches!(kind, Kind::Char | Kind::Block) {
            (
                id32(
                    nonneg(parse_numeric(&b[329..337], "devmajor")?, "devmajor")?,
                    "devmajor",
                )?,
                id32(
                    nonneg(parse_numeric(&b[337..345], "devminor")?, "devminor")?,
                    "devminor",
                )?,
            )
        } else {
            (0, 0)
        };

        // Only regular files carry data (Go treats every other type as header-only).
        let mut data_size = if kind == Kind::Regular { size } else { 0 };
        if kind != Kind::Regular {
            size = 0;
        }

        let mut sparse = None;
        if typeflag == b'S' {
            let (map, realsize) = self.old_gnu_sparse(b)?;
            sparse = Some(map);
            size = realsize;
        } else if kind == Kind::Regular {
            if let Some((map, realsize, sparse_name)) = self.pax_sparse(&pax, &mut data_size)? {
                sparse = Some(map);
                size = realsize;
                if let Some(n) = sparse_name {
                    name = n;
                }
            }
        }
        if let Some(map) = &sparse {
            validate_sparse(map, size, data_size)?;
        }

        for (what, v) in [("name", &name), ("link name", &linkname)] {
            if v.len() > MAX_PATH {
                return Err(invalid(format!("{what} longer than {MAX_PATH} bytes")));
            }
            if v.contains(&0) {
                return Err(invalid(format!("{what} contains a NUL byte")));
            }
        }

        self.data_left = data_size;
        self.pad_left = padding(data_size);
        Ok(Entry {
            name,
            linkname,
            kind,
            mode,
            uid,
            gid,
            size,
            mtime,
            atime,
            devmajor,
            devminor,
            xattrs: pax.xattrs,
            sparse,
        })
    }

    /// Old GNU sparse ('S'): four map slots in the header, more in extension blocks; the
    /// header's size field is the stored data, the real size sits at offset 483.
    fn old_gnu_sparse(&mut self, b: &[u8; BLOCK]) -> Result<(Vec<(u64, u64)>, u64)> {
        let mut map = Vec::new();
        let push_slots = |blk: &[u8], slots: usize, map: &mut Vec<(u64, u64)>| -> Result<()> {
            for i in 0..slots {
                let s = &blk[i * 24..i * 24 + 24];
                if s[0] == 0 {
                    break;
                }
                let off = nonneg(parse_numeric(&s[..12], "sparse offset")?, "sparse offset")?;
                let len = nonneg(parse_numeric(&s[12..], "sparse length")?, "sparse length")?;
                map.push((off, len));
            }
            Ok(())
        };
        push_slots(&b[386..482], 4, &mut map)?;
        let realsize = nonneg(parse_numeric(&b[483..495], "sparse size")?, "sparse size")?;
        let mut extended = b[482] != 0;
        while extended {
            let Some(ext) = self.block()? else {
                return Err(invalid("unexpected end of stream in a sparse map"));
            };
            push_slots(&ext[..504], 21, &mut map)?;
            if map.len() > MAX_SPARSE {
                return Err(invalid("sparse map too large"));
            }
            extended = ext[504] != 0;
        }
        Ok((map, realsize))
    }

    /// PAX sparse formats 0.0 (offset/numbytes pairs), 0.1 (`GNU.sparse.map`) and 1.0 (map at
    /// the start of the data). Returns (map, real size, real name).
    #[allow(clippy::type_complexity)]
    fn pax_sparse(
        &mut self,
        pax: &Pax,
        data_size: &mut u64,
    ) -> Result<Option<(Vec<(u64, u64)>, u64, Option<Vec<u8>>)>> {
        let major = pax.sparse_major.as_deref();
        let minor = pax.sparse_minor.as_deref();
        let numbers: Vec<u64>;
        if major == Some(b"1") && minor == Some(b"0") {
            numbers = self.sparse_map_1_0(data_size)?;
        } else if let Some(m) = &pax.sparse_map {
            numbers = if m.is_empty() {
                Vec::new()
            } else {
                m.split(|&c| c == b',')
                    .map(|s| parse_decimal(s, "GNU.sparse.map"))
                    .collect::<Result<_>>()?
            };
        } else if !pax.sparse_pairs.is_empty() {
            numbers = pax.sparse_pairs.clone();
        } else if major.is_some() || pax.sparse_realsize.is_some() {
            return Err(invalid("unsupported PAX sparse format"));
        } else {
            return Ok(None);
        }
        if !numbers.len().is_multiple_of(2) {
            return Err(invalid("odd number of sparse map values"));
        }
        if numbers.len() / 2 > MAX_SPARSE {
            return Err(invalid("sparse map too large"));
        }
        let map = numbers.chunks(2).map(|c| (c[0], c[1])).collect();
        let realsize = pax
            .sparse_realsize
            .ok_or_else(|| invalid("PAX sparse file without a real size"))?;
        Ok(Some((map, realsize, pax.sparse_name.clone())))
    }

    /// GNU sparse 1.0: decimal numbers, one per line, padded to a block, inside the data.
    fn sparse_map_1_0(&mut self, data_size: &mut u64) -> Result<Vec<u64>> {
        let mut consumed: u64 = 0;
        let mut text: Vec<u8> = Vec::new();
        let mut next_line = |rd: &mut Self, text: &mut Vec<u8>| -> Result<Vec<u8>> {
            loop {
                if let Some(i) = text.iter().position(|&c| c == b'\n') {
                    let line = text[..i].to_vec();
                    text.drain(..=i);
                    return Ok(line);
                }
                if consumed >= MAX_META || consumed + BLOCK as u64 > *data_size {
                    return Err(invalid("malformed GNU sparse 1.0 map"));
                }
                let mut blk = Vec::with_capacity(BLOCK);
                rd.read_data_raw(BLOCK as u64, &mut blk)?;
                consumed += BLOCK as u64;
                text.extend_from_slice(&blk);
            }
        };
        let count = parse_decimal(&next_line(self, &mut text)?, "sparse map count")?;
        if count > MAX_SPARSE as u64 {
            return Err(invalid("sparse map too large"));
        }
        let mut nums = Vec::with_capacity(count as usize * 2);
        for _ in 0..count * 2 {
            nums.push(parse_decimal(
                &next_line(self, &mut text)?,
                "sparse map value",
            )?);
        }
        // The map occupies whole blocks; the rest of the data is the file's segments.
        *data_size -= consumed;
        Ok(nums)
    }

    /// Read raw bytes of the current data area before `data_left` has been set.
    fn read_data_raw(&mut self, n: u64, out: &mut Vec<u8>) -> Result<()> {
        let mut left = n;
        while left > 0 {
            let avail = self.src.fill()?;
            if avail.is_empty() {
                return Err(invalid("unexpected end of stream in a sparse map"));
            }
            let k = (avail.len() as u64).min(left) as usize;
            out.extend_from_slice(&avail[..k]);
            self.src.consume(k);
            left -= k as u64;
        }
        Ok(())
    }
}

fn validate_sparse(map: &[(u64, u64)], realsize: u64, data_size: u64) -> Result<()> {
    let mut end = 0u64;
    let mut stored = 0u64;
    for &(off, len) in map {
        let seg_end = off
            .checked_add(len)
            .ok_or_else(|| invalid("sparse segment overflows"))?;
        if off < end || seg_end > realsize {
            return Err(invalid("sparse segments overlap or exceed the file size"));
        }
        end = seg_end;
        stored += len;
    }
    if stored != data_size {
        return Err(invalid("sparse map does not match the stored data"));
    }
    Ok(())
}

pub(crate) fn padding(n: u64) -> u64 {
    (BLOCK as u64 - n % BLOCK as u64) % BLOCK as u64
}

fn trim_nul(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(i) => &b[..i],
        None => b,
    }
}

fn nonneg(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| invalid(format!("negative {what}")))
}

/// uid/gid/dev numbers must fit in 32 bits; `u32::MAX` means "unchanged" to chown, so it is
/// refused as well.
fn id32(v: u64, what: &str) -> Result<u32> {
    match u32::try_from(v) {
        Ok(x) if x != u32::MAX => Ok(x),
        _ => Err(invalid(format!("{what} {v} out of range"))),
    }
}

fn verify_checksum(b: &[u8; BLOCK]) -> Result<()> {
    let want = parse_numeric(&b[148..156], "checksum")?;
    let mut unsigned: i64 = 0;
    let mut signed: i64 = 0;
    for (i, &c) in b.iter().enumerate() {
        let c = if (148..156).contains(&i) { b' ' } else { c };
        unsigned += i64::from(c);
        signed += i64::from(c as i8);
    }
    if want != unsigned && want != signed {
        return Err(invalid("header checksum mismatch"));
    }
    Ok(())
}

/// A numeric header field: octal text, or GNU base-256 when the high bit is set.
fn parse_numeric(field: &[u8], what: &str) -> Result<i64> {
    if let Some(&first) = field.first() {
        if first & 0x80 != 0 {
            // GNU base-256, two's complement: invert negative values so `-a-1 == !a` holds.
            let inv = if first & 0x40 != 0 { 0xff } else { 0 };
            let mut v: u64 = 0;
            for (i, &c) in field.iter().enumerate() {
                let c = if i == 0 { (c ^ inv) & 0x7f } else { c ^ inv };
                if v >> 56 != 0 {
                    return Err(invalid(format!("{what} field overflows")));
                }
                v = v << 8 | u64::from(c);
            }
            let v = i64::try_from(v).map_err(|_| invalid(format!("{what} field overflows")))?;
            return Ok(if inv != 0 { !v } else { v });
        }
    }
    // Like Go: surrounding spaces and NULs are padding, an empty field is zero.
    let pad = |c: &u8| *c == b' ' || *c == 0;
    let start = field.iter().position(|c| !pad(c)).unwrap_or(field.len());
    let end = field.iter().rposition(|c| !pad(c)).map_or(start, |e| e + 1);
    let s = &field[start..end];
    let mut v: i64 = 0;
    for &c in s {
        if !(b'0'..=b'7').contains(&c) {
            return Err(invalid(format!("bad octal digit in the {what} field")));
        }
        v = v
            .checked_mul(8)
            .and_then(|v| v.checked_add(i64::from(c - b'0')))
            .ok_or_else(|| invalid(format!("{what} field overflows")))?;
    }
    Ok(v)
}

fn parse_decimal(s: &[u8], what: &str) -> Result<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return Err(invalid(format!("bad number in {what}")));
    }
    s.iter().try_fold(0u64, |v, &c| {
        v.checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(c - b'0')))
            .ok_or_else(|| invalid(format!("{what} overflows")))
    })
}

/// `i64`-bounded decimal, so a PAX `size=9223372036854775808` is an error (as in Go).
fn parse_pax_int(s: &[u8], what: &str) -> Result<u64> {
    let v = parse_decimal(s, what)?;
    if v > i64::MAX as u64 {
        return Err(invalid(format!("{what} overflows")));
    }
    Ok(v)
}

/// PAX time: `[-]secs[.frac]`.
fn parse_pax_time(s: &[u8], what: &str) -> Result<Time> {
    let (neg, s) = match s.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (secs, frac) = match s.iter().position(|&c| c == b'.') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, &[][..]),
    };
    let secs = parse_pax_int(secs, what)? as i64;
    if !frac.iter().all(u8::is_ascii_digit) {
        return Err(invalid(format!("bad {what}")));
    }
    let mut nsec: u32 = 0;
    for i in 0..9 {
        nsec = nsec * 10 + frac.get(i).map_or(0, |c| u32::from(c - b'0'));
    }
    Ok(if !neg {
        (secs, nsec)
    } else if nsec == 0 {
        (-secs, 0)
    } else {
        (-secs - 1, 1_000_000_000 - nsec)
    })
}

/// Parse `"%d %s=%s\n"` records; later records override earlier ones.
fn parse_pax(mut data: &[u8], pax: &mut Pax) -> Result<()> {
    while !data.is_empty() {
        let sp = data
            .iter()
            .position(|&c| c == b' ')
            .ok_or_else(|| invalid("malformed PAX record"))?;
        let len = parse_decimal(&data[..sp], "PAX record length")?;
        let len = usize::try_from(len).map_err(|_| invalid("malformed PAX record"))?;
        if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(invalid("malformed PAX record"));
        }
        let rec = &data[sp + 1..len - 1];
        data = &data[len..];
        let eq = rec
            .iter()
            .position(|&c| c == b'=')
            .ok_or_else(|| invalid("malformed PAX record"))?;
        let (key, value) = (&rec[..eq], &rec[eq + 1..]);
        if key.is_empty() {
            return Err(invalid("malformed PAX record"));
        }
        match key {
            b"path" => pax.path = (!value.is_empty()).then(|| value.to_vec()),
            b"linkpath" => pax.linkpath = (!value.is_empty()).then(|| value.to_vec()),
            b"size" => pax.size = Some(parse_pax_int(value, "PAX size")?),
            b"uid" => pax.uid = Some(parse_pax_int(value, "PAX uid")?),
            b"gid" => pax.gid = Some(parse_pax_int(value, "PAX gid")?),
            b"mtime" => pax.mtime = Some(parse_pax_time(value, "PAX mtime")?),
            b"atime" => pax.atime = Some(parse_pax_time(value, "PAX atime")?),
            b"GNU.sparse.major" => pax.sparse_major = Some(value.to_vec()),
            b"GNU.sparse.minor" => pax.sparse_minor = Some(value.to_vec()),
            b"GNU.sparse.name" => pax.sparse_name = Some(value.to_vec()),
            b"GNU.sparse.realsize" | b"GNU.sparse.size" => {
                pax.sparse_realsize = Some(parse_pax_int(value, "GNU.sparse.size")?)
            }
            b"GNU.sparse.map" => pax.sparse_map = Some(value.to_vec()),
            b"GNU.sparse.offset" | b"GNU.sparse.numbytes" => {
                if pax.sparse_pairs.len() >= 2 * MAX_SPARSE {
                    return Err(invalid("sparse map too large"));
                }
                pax.sparse_pairs.push(parse_pax_int(value, "GNU.sparse")?)
            }
            _ => {
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    if name.is_empty() || name.contains(&0) {
                        return Err(invalid("malformed xattr name"));
                    }
                    pax.xattrs.retain(|(k, _)| k != name);
                    pax.xattrs.push((name.to_vec(), value.to_vec()));
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Writing

/// One entry to write; `compute` fills it from `lstat`.
pub(crate) struct WriteHeader<'a> {
    pub name: &'a [u8],
    pub linkname: &'a [u8],
    pub typeflag: u8,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub devmajor: u32,
    pub devminor: u32,
    pub xattrs: &'a [(&'a [u8], Vec<u8>)],
}

const MAX_OCTAL_8: u64 = 0o777_7777; // 7 digits + NUL
const MAX_OCTAL_12: u64 = 0o777_7777_7777; // 11 digits + NUL

/// Write a ustar header, preceded by a PAX header when a value does not fit (long or non-ASCII
/// names, big ids or sizes, xattrs) — Go's `FormatPAX` behaviour.
pub(crate) fn write_header(w: &mut dyn Write, h: &WriteHeader<'_>) -> std::io::Result<()> {
    let mut records: Vec<u8> = Vec::new();
    let fits = |s: &[u8], n: usize| s.len() <= n && s.is_ascii();
    if !fits(h.name, 100) {
        pax_record(&mut records, b"path", h.name);
    }
    if !fits(h.linkname, 100) {
        pax_record(&mut records, b"linkpath", h.linkname);
    }
    if u64::from(h.uid) > MAX_OCTAL_8 {
        pax_record(&mut records, b"uid", h.uid.to_string().as_bytes());
    }
    if u64::from(h.gid) > MAX_OCTAL_8 {
        pax_record(&mut records, b"gid", h.gid.to_string().as_bytes());
    }
    if h.size > MAX_OCTAL_12 {
        pax_record(&mut records, b"size", h.size.to_string().as_bytes());
    }
    if h.mtime < 0 || h.mtime as u64 > MAX_OCTAL_12 {
        pax_record(&mut records, b"mtime", h.mtime.to_string().as_bytes());
    }
    for (k, v) in h.xattrs {
        let mut key = b"SCHILY.xattr.".to_vec();
        key.extend_from_slice(k);
        pax_record(&mut records, &key, v);
    }
    if !records.is_empty() {
        let base = h
            .name
            .strip_suffix(b"/")
            .unwrap_or(h.name)
            .rsplit(|&c| c == b'/')
            .next()
            .unwrap_or_default();
        let mut pname = b"PaxHeaders.0/".to_vec();
        pname.extend(
            base.iter()
                .copied()
                .filter(u8::is_ascii)
                .take(100 - pname.len()),
        );
        let blk = ustar_block(&WriteHeader {
            name: &pname,
            linkname: b"",
            typeflag: b'x',
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: records.len() as u64,
            mtime: h.mtime.clamp(0, MAX_OCTAL_12 as i64),
            devmajor: 0,
            devminor: 0,
            xattrs: &[],
        });
        w.write_all(&blk)?;
        w.write_all(&records)?;
        w.write_all(&[0u8; BLOCK][..padding(records.len() as u64) as usize])?;
    }
    w.write_all(&ustar_block(h))
}

fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    // The length prefix counts itself, so find the fixed point.
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

pub(crate) fn ustar_block(h: &WriteHeader<'_>) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    let cut = |s: &[u8], n: usize| -> Vec<u8> {
        if s.len() <= n && s.is_ascii() {
            s.to_vec()
        } else {
            s.iter().copied().filter(u8::is_ascii).take(n).collect()
        }
    };
    let name = cut(h.name, 100);
    b[..name.len()].copy_from_slice(&name);
    octal(&mut b[100..108], u64::from(h.mode & 0o7777));
    octal(&mut b[108..116], u64::from(h.uid).min(MAX_OCTAL_8));
    octal(&mut b[116..124], u64::from(h.gid).min(MAX_OCTAL_8));
    octal(&mut b[124..136], h.size.min(MAX_OCTAL_12));
    octal(
        &mut b[136..148],
        h.mtime.clamp(0, MAX_OCTAL_12 as i64) as u64,
    );
    b[156] = h.typeflag;
    let link = cut(h.linkname, 100);
    b[157..157 + link.len()].copy_from_slice(&link);
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    octal(&mut b[329..337], u64::from(h.devmajor).min(MAX_OCTAL_8));
    octal(&mut b[337..345], u64::from(h.devminor).min(MAX_OCTAL_8));
    b[148..156].fill(b' ');
    let sum: u64 = b.iter().map(|&c| u64::from(c)).sum();
    octal(&mut b[148..155], sum);
    b[155] = b' ';
    b
}

/// Zero-padded octal filling all but the last byte, which stays NUL.
fn octal(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    field[..digits].copy_from_slice(&s.as_bytes()[s.len() - digits..]);
    field[digits] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_fields() {
        assert_eq!(parse_numeric(b"0000644\0", "m").unwrap(), 0o644);
        assert_eq!(parse_numeric(b"   644 \0", "m").unwrap(), 0o644);
        assert_eq!(parse_numeric(b"\0\0\0\0\0\0\0\0", "m").unwrap(), 0);
        assert!(parse_numeric(b"0000a44\0", "m").is_err());
        let mut b256 = [0u8; 12];
        b256[0] = 0x80;
        b256[11] = 5;
        assert_eq!(parse_numeric(&b256, "s").unwrap(), 5);
        let neg = [0xffu8; 8];
        assert_eq!(parse_numeric(&neg, "t").unwrap(), -1);
        let mut huge = [0xffu8; 12];
        huge[0] = 0x80;
        assert!(parse_numeric(&huge, "s").is_err());
    }

    #[test]
    fn pax_values() {
        assert_eq!(
            parse_pax_time(b"1700000000.5", "t").unwrap(),
            (1700000000, 500_000_000)
        );
        assert_eq!(parse_pax_time(b"-1.25", "t").unwrap(), (-2, 750_000_000));
        assert!(parse_pax_int(b"9223372036854775808", "size").is_err());
        assert!(parse_pax_int(b"99999999999999999999999", "size").is_err());
        let mut pax = Pax::default();
        let mut rec = Vec::new();
        pax_record(&mut rec, b"path", b"a/b");
        pax_record(&mut rec, b"SCHILY.xattr.user.x", b"v\0w");
        parse_pax(&rec, &mut pax).unwrap();
        assert_eq!(pax.path.as_deref(), Some(&b"a/b"[..]));
        assert_eq!(pax.xattrs, vec![(b"user.x".to_vec(), b"v\0w".to_vec())]);
        for bad in [&b"5 a=b\n"[..], b"99 path=x\n", b"x path=y\n", b"9 pathx\n"] {
            assert!(parse_pax(bad, &mut Pax::default()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pax_record_lengths() {
        for n in [0usize, 1, 5, 90, 95, 96, 97, 990, 995, 1000] {
            let mut out = Vec::new();
            pax_record(&mut out, b"path", &vec![b'a'; n]);
            let sp = out.iter().position(|&c| c == b' ').unwrap();
            let len: usize = std::str::from_utf8(&out[..sp]).unwrap().parse().unwrap();
            assert_eq!(len, out.len(), "n={n}");
        }
    }
}
