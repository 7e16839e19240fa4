//! The byte-level half of the adapter: follows the client→server HTTP/2 frame stream, decodes
//! every header block with its own HPACK state, and replaces an `:authority` that h2 would refuse.
//! Synchronous and free of I/O so that every framing case can be tested byte by byte.
//!
//! Frames other than header blocks are never held: `scan` reports how many of the bytes just read
//! may go to the server as they are, so DATA is not copied at all. Only a header block (HEADERS and
//! its CONTINUATIONs) or a frame header split across reads is held back until it is complete.

use loona_hpack::encoder::encode_integer_into;
use loona_hpack::Decoder;

/// What every HTTP/2 connection starts with (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;

const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
const PRIORITY_LEN: usize = 5;

/// The largest frame the server takes: berthd never raises SETTINGS_MAX_FRAME_SIZE above the
/// protocol's default, and we only see the client's side of the connection.
const MAX_FRAME_LEN: usize = 16_384;

/// The largest header block (encoded, all frames, padding included) that is decoded here. hyper
/// configures h2's server with a 16 KiB header list limit (decoded: name + value + 32 per field),
/// and no HPACK field encodes to more than 3.75 times its decoded size (Huffman's longest code is
/// 30 bits), so a block past 64 KiB is one h2 refuses whatever we do. Passing it through unchanged
/// keeps that refusal and bounds what one connection can make us buffer.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// The dynamic table limit the client's encoder must respect: h2's server never advertises a
/// SETTINGS_HEADER_TABLE_SIZE, so the protocol default holds.
const HEADER_TABLE_SIZE: usize = 4096;

/// What h2 is given instead of an authority it would refuse; grpc-go sends the same.
const REPLACEMENT: &[u8] = b"localhost";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Matching the connection preface; the count is how much of it has been seen.
    Preface(usize),
    /// Following frames.
    Frames,
    /// Not (or no longer) a stream we can follow: everything passes as it is, and h2 judges it.
    Opaque,
}

#[derive(Debug, Clone, Copy)]
struct FrameHeader {
    len: usize,
    kind: u8,
    flags: u8,
    stream_id: u32,
}

impl FrameHeader {
    fn parse(b: &[u8]) -> FrameHeader {
        FrameHeader {
            len: (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            stream_id: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    fn write(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream_id: u32) {
        let len = len as u32;
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&stream_id.to_be_bytes());
    }
}

/// A header block being collected: HEADERS, then CONTINUATIONs until END_HEADERS.
#[derive(Debug, Default)]
struct Block {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; PRIORITY_LEN]>,
    /// The HPACK bytes, padding and priority removed.
    fragment: Vec<u8>,
    /// The frames exactly as the client sent them, forwarded when nothing needs changing.
    raw: Vec<u8>,
}

/// The client→server half of one connection.
pub struct Rewriter {
    phase: Phase,
    /// Payload bytes of the current pass-through frame still to come.
    skip: usize,
    /// Bytes read but not yet decided on (a split frame header or part of a header block).
    pending: Vec<u8>,
    /// Decided bytes not yet handed to the server; they come before anything in `pending`.
    out: Vec<u8>,
    out_pos: usize,
    block: Option<Block>,
    decoder: Decoder<'static>,
    /// Set once a block has been rewritten: the server's HPACK table no longer matches the
    /// client's, so every later block is re-encoded without any reference to it.
    diverged: bool,
    rewritten: u64,
}

impl Default for Rewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl Rewriter {
    pub fn new() -> Rewriter {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        Rewriter {
            phase: Phase::Preface(0),
            skip: 0,
            pending: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            block: None,
            decoder,
            diverged: false,
            rewritten: 0,
        }
    }

    /// How many header blocks had their `:authority` replaced so far.
    pub fn rewritten(&self) -> u64 {
        self.rewritten
    }

    /// Takes bytes just read from the client. Returns how many of them, from the start, go to the
    /// server unchanged and in place; the rest are kept, and what they become appears in
    /// `output()` (after those first bytes).
    pub fn accept(&mut self, data: &[u8]) -> usize {
        let verbatim = if self.pending.is_empty() && self.output().is_empty() {
            self.scan(data)
        } else {
            0
        };
        if verbatim < data.len() {
            self.pending.extend_from_slice(&data[verbatim..]);
            self.process();
        }
        verbatim
    }

    /// Bytes ready for the server that did not pass in place.
    pub fn output(&self) -> &[u8] {
        &self.out[self.out_pos..]
    }

    pub fn consume_output(&mut self, n: usize) {
        self.out_pos += n;
        if self.out_pos >= self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
    }

    /// The client closed its side: whatever is still held goes to the server as it is, so h2
    /// sees the same truncated stream it would have seen without us.
    pub fn finish(&mut self) {
        self.give_up();
        let rest = std::mem::take(&mut self.pending);
        self.out.extend_from_slice(&rest);
    }

    /// Walks `data` from the current position and returns the length of the prefix that passes
    /// unchanged: it stops at a frame header that is incomplete or starts a header block.
    fn scan(&mut self, data: &[u8]) -> usize {
        let mut i = 0;
        loop {
            match self.phase {
                Phase::Opaque => return data.len(),
                Phase::Preface(seen) => {
                    let want = &PREFACE[seen..];
                    let n = want.len().min(data.len() - i);
                    if data[i..i + n] != want[..n] {
                        self.phase = Phase::Opaque;
                        return data.len();
                    }
                    i += n;
                    if n < want.len() {
                        self.phase = Phase::Preface(seen + n);
                        return i;
                    }
                    self.phase = Phase::Frames;
                }
                Phase::Frames => {
                    let n = self.skip.min(data.len() - i);
                    self.skip -= n;
                    i += n;
                    if i == data.len() || data.len() - i < FRAME_HEADER_LEN {
                        return i;
                    }
                    let head = FrameHeader::parse(&data[i..]);
                    if self.block.is_some()
                        || matches!(head.kind, HEADERS | CONTINUATION | PUSH_PROMISE)
                    {
                        return i;
                    }
                    self.skip = head.len;
                    i += FRAME_HEADER_LEN;
                }
            }
        }
    }

    /// Works through `pending`: passes what can pass, completes header blocks, and waits for more
    /// input when a frame is incomplete.
    fn process(&mut self) {
        loop {
            self.scan_pending();
            if self.pending.is_empty() {
                return;
            }
            if self.pending.len() < FRAME_HEADER_LEN {
                return;
            }
            let head = FrameHeader::parse(&self.pending);
            if head.len > MAX_FRAME_LEN || head.kind == PUSH_PROMISE {
                // h2 refuses both; it must see them exactly as sent.
                self.give_up();
                continue;
            }
            let frame_len = FRAME_HEADER_LEN + head.len;
            if self.pending.len() < frame_len {
                return;
            }
            let frame: Vec<u8> = self.pending.drain(..frame_len).collect();
            self.header_block_frame(head, frame);
        }
    }

    /// Runs `scan` over the held bytes and moves the prefix that passes into the output.
    fn scan_pending(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        let n = self.scan(&pending);
        self.out.extend_from_slice(&pending[..n]);
        self.pending = pending;
        self.pending.drain(..n);
    }

    /// One complete HEADERS or CONTINUATION frame (or any frame arriving inside a header block).
    fn header_block_frame(&mut self, head: FrameHeader, frame: Vec<u8>) {
        let payload = &frame[FRAME_HEADER_LEN..];
        match (head.kind, self.block.take()) {
            (HEADERS, None) => {
                let Some((priority, fragment)) = headers_payload(head.flags, payload) else {
                    self.out.extend_from_slice(&frame);
                    self.give_up();
                    return;
                };
                let block = Block {
                    stream_id: head.stream_id,
                    end_stream: head.flags & END_STREAM != 0,
                    priority,
                    fragment: fragment.to_vec(),
                    raw: frame,
                };
                self.extend_block(block, head.flags);
            }
            (CONTINUATION, Some(mut block)) if head.stream_id == block.stream_id => {
                block.fragment.extend_from_slice(payload);
                block.raw.extend_from_slice(&frame);
                self.extend_block(block, head.flags);
            }
            (_, block) => {
                // A CONTINUATION out of place, or another frame inside a block: a connection
                // error h2 reports itself.
                self.block = block;
                self.give_up();
                self.out.extend_from_slice(&frame);
            }
        }
    }

    fn extend_block(&mut self, block: Block, flags: u8) {
        if block.raw.len() > MAX_HEADER_BLOCK {
            self.block = Some(block);
            self.give_up();
        } else if flags & END_HEADERS == 0 {
            self.block = Some(block);
        } else {
            self.complete(block);
        }
    }

    fn complete(&mut self, block: Block) {
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let decoded = self.decoder.decode_with_cb(&block.fragment, |name, value| {
            fields.push((name.into_owned(), value.into_owned()))
        });
        if decoded.is_err() {
            // h2 fails the same block the same way; our table is lost from here on.
            self.block = Some(block);
            self.give_up();
            return;
        }
        let mut changed = false;
        for (name, value) in &mut fields {
            if name == b":authority" && !acceptable_authority(value) {
                *value = REPLACEMENT.to_vec();
                changed = true;
            }
        }
        if changed {
            self.rewritten += 1;
        }
        if !changed && !self.diverged {
            self.out.extend_from_slice(&block.raw);
            return;
        }
        self.diverged = true;
        let mut hpack = Vec::with_capacity(block.fragment.len() + 16);
        for (name, value) in &fields {
            encode_literal(&mut hpack, name, value);
        }
        self.write_block(&block, &hpack);
    }

    /// Frames a re-encoded block: HEADERS (with the client's priority, without padding), then
    /// CONTINUATIONs, none larger than the server's frame limit.
    fn write_block(&mut self, block: &Block, hpack: &[u8]) {
        let prio_len = block.priority.map_or(0, |_| PRIORITY_LEN);
        let first = hpack.len().min(MAX_FRAME_LEN - prio_len);
        let mut flags = if block.end_stream { END_STREAM } else { 0 };
        if block.priority.is_some() {
            flags |= PRIORITY;
        }
        if first == hpack.len() {
            flags |= END_HEADERS;
        }
        FrameHeader::write(
            &mut self.out,
            prio_len + first,
            HEADERS,
            flags,
            block.stream_id,
        );
        if let Some(p) = &block.priority {
            self.out.extend_from_slice(p);
        }
        self.out.extend_from_slice(&hpack[..first]);
        let mut rest = &hpack[first..];
        while !rest.is_empty() {
            let n = rest.len().min(MAX_FRAME_LEN);
            let flags = if n == rest.len() { END_HEADERS } else { 0 };
            FrameHeader::write(&mut self.out, n, CONTINUATION, flags, block.stream_id);
            self.out.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
    }

    /// Stop following the stream: a block in progress goes out as the client sent it, and so does
    /// everything after it.
    fn give_up(&mut self) {
        if let Some(block) = self.block.take() {
            self.out.extend_from_slice(&block.raw);
        }
        self.phase = Phase::Opaque;
    }
}

/// Splits a HEADERS payload into its priority fields and header block fragment; `None` when the
/// padding or priority it announces does not fit (h2 refuses such a frame).
fn headers_payload(flags: u8, payload: &[u8]) -> Option<(Option<[u8; PRIORITY_LEN]>, &[u8])> {
    let mut p = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        let (&n, rest) = p.split_first()?;
        pad = usize::from(n);
        p = rest;
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        let fields = p.get(..PRIORITY_LEN)?;
        let mut b = [0; PRIORITY_LEN];
        b.copy_from_slice(fields);
        priority = Some(b);
        p = &p[PRIORITY_LEN..];
    }
    let end = p.len().checked_sub(pad)?;
    Some((priority, &p[..end]))
}

/// Whether h2 takes this value as a request's authority: the same parser it uses, which refuses
/// an empty value, a path and a percent-encoded path alike.
pub fn acceptable_authority(value: &[u8]) -> bool {
    !value.is_empty() && http::uri::Authority::try_from(value).is_ok()
}

/// A literal field without indexing and with a literal name (RFC 7541 §6.2.2): it neither reads
/// nor changes the server's dynamic table, so that table's contents never matter again.
fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0);
    for s in [name, value] {
        // Writing to a Vec cannot fail.
        let _ = encode_integer_into(s.len(), 7, 0, out);
        out.extend_from_slice(s);
    }
}
