//! Byte-level tests of the rewriter and the adapter: frames are built by hand, header blocks by an
//! independent HPACK encoder, and the output is read back the way h2 reads it (one decoder for
//! the whole connection).

use crate::{AuthorityFix, Rewriter, MAX_HEADER_BLOCK};
use loona_hpack::{Decoder, Encoder};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn request(authority: &[u8], path: &str) -> Fields {
    vec![
        (b":method".to_vec(), b"POST".to_vec()),
        (b":scheme".to_vec(), b"http".to_vec()),
        (b":path".to_vec(), path.as_bytes().to_vec()),
        (b":authority".to_vec(), authority.to_vec()),
        (b"te".to_vec(), b"trailers".to_vec()),
        (b"content-type".to_vec(), b"application/grpc".to_vec()),
        (b"containerd-namespace".to_vec(), b"default".to_vec()),
        (b"user-agent".to_vec(), b"grpc-python/1.76.0".to_vec()),
    ]
}

/// The client's side: one encoder per connection, indexing as real clients do.
fn encode(enc: &mut Encoder<'_>, fields: &Fields) -> Vec<u8> {
    enc.encode(fields.iter().map(|(n, v)| (&n[..], &v[..])))
}

fn start() -> Vec<u8> {
    let mut v = PREFACE.to_vec();
    v.extend(frame(SETTINGS, 0, 0, &[0, 2, 0, 0, 0, 0])); // ENABLE_PUSH = 0
    v.extend(frame(WINDOW_UPDATE, 0, 0, &[0, 0x0f, 0, 1]));
    v
}

/// Feeds `input` in `chunk`-sized reads the way the adapter does and returns what the server gets.
fn run(input: &[u8], chunk: usize) -> (Vec<u8>, u64) {
    let mut r = Rewriter::new();
    let mut out = Vec::new();
    for c in input.chunks(chunk) {
        let n = r.accept(c);
        out.extend_from_slice(&c[..n]);
        out.extend_from_slice(r.output());
        let len = r.output().len();
        r.consume_output(len);
    }
    r.finish();
    out.extend_from_slice(r.output());
    (out, r.rewritten())
}

/// Every chunking must give the same output.
fn run_all(input: &[u8]) -> (Vec<u8>, u64) {
    let whole = run(input, input.len().max(1));
    for chunk in [1, 2, 5, 9, 10, 100, 4096] {
        assert_eq!(run(input, chunk), whole, "chunk size {chunk} differs");
    }
    whole
}

#[derive(Debug, PartialEq)]
enum Seen {
    Headers {
        stream: u32,
        end_stream: bool,
        priority: Option<Vec<u8>>,
        fields: Fields,
    },
    Other {
        kind: u8,
        flags: u8,
        stream: u32,
        payload: Vec<u8>,
    },
}

/// Parses a client→server byte stream the way the server does: one HPACK decoder for the whole
/// connection, header blocks reassembled from HEADERS + CONTINUATION. Frame sizes are checked
/// against the server's 16 KiB limit.
fn server_view(bytes: &[u8]) -> Vec<Seen> {
    assert!(bytes.starts_with(PREFACE));
    let mut rest = &bytes[PREFACE.len()..];
    let mut decoder = Decoder::new();
    let mut seen = Vec::new();
    // (stream, END_STREAM, priority fields, HPACK bytes) of the block being reassembled.
    type Open = (u32, bool, Option<Vec<u8>>, Vec<u8>);
    let mut block: Option<Open> = None;
    while !rest.is_empty() {
        let len = (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
        assert!(len <= 16_384, "frame of {len} bytes");
        let (kind, flags) = (rest[3], rest[4]);
        let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
        let payload = &rest[9..9 + len];
        rest = &rest[9 + len..];
        match kind {
            HEADERS => {
                assert!(block.is_none());
                let mut p = payload;
                let mut pad = 0;
                if flags & PADDED != 0 {
                    pad = usize::from(p[0]);
                    p = &p[1..];
                }
                let mut priority = None;
                if flags & PRIORITY != 0 {
                    priority = Some(p[..5].to_vec());
                    p = &p[5..];
                }
                let p = &p[..p.len() - pad];
                block = Some((stream, flags & END_STREAM != 0, priority, p.to_vec()));
            }
            CONTINUATION => {
                let b = block.as_mut().expect("continuation inside a block");
                assert_eq!(b.0, stream);
                b.3.extend_from_slice(payload);
            }
            _ => {
                assert!(block.is_none(), "frame {kind} inside a header block");
                seen.push(Seen::Other {
                    kind,
                    flags,
                    stream,
                    payload: payload.to_vec(),
                });
            }
        }
        if matches!(kind, HEADERS | CONTINUATION) && flags & END_HEADERS != 0 {
            let (stream, end_stream, priority, hpack) = block.take().unwrap();
            let fields = decoder.decode(&hpack).expect("server decodes the block");
            seen.push(Seen::Headers {
                stream,
                end_stream,
                priority,
                fields,
            });
        }
    }
    assert!(block.is_none(), "header block left open");
    seen
}

fn headers(stream: u32, fields: Fields) -> Seen {
    Seen::Headers {
        stream,
        end_stream: false,
        priority: None,
        fields,
    }
}

fn data(stream: u32, flags: u8, payload: &[u8]) -> Seen {
    Seen::Other {
        kind: DATA,
        flags,
        stream,
        payload: payload.to_vec(),
    }
}

/// grpc-go's connection: `localhost` everywhere, indexed from the second request on.
#[test]
fn well_formed_blocks_pass_byte_identical() {
    let mut enc = Encoder::new();
    let mut input = start();
    for stream in [1u32, 3, 5] {
        let block = encode(
            &mut enc,
            &request(
                b"localhost",
                "/containerd.services.version.v1.Version/Version",
            ),
        );
        input.extend(frame(HEADERS, END_HEADERS, stream, &block));
        input.extend(frame(DATA, END_STREAM, stream, &[0, 0, 0, 0, 0]));
    }
    // An authority with a port, and none at all, are fine with h2 too.
    let block = encode(&mut enc, &request(b"berth.local:443", "/x"));
    input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 7, &block));
    let mut no_authority = request(b"", "/y");
    no_authority.retain(|(n, _)| n != b":authority");
    let block = encode(&mut enc, &no_authority);
    input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 9, &block));
    let (out, rewritten) = run_all(&input);
    assert_eq!(rewritten, 0);
    assert!(out == input, "well-formed connection was changed");
}

#[test]
fn bad_authorities_are_replaced_and_other_fields_survive() {
    for bad in [
        &b"%2Frun%2Fberth%2Fberthd.sock"[..],
        b"/run/berth/berthd.sock",
        b"",
        b"unix:/run/berth/berthd.sock",
        b"a b",
        b"\xff\xfe",
    ] {
        let mut enc = Encoder::new();
        let mut input = start();
        let fields = request(bad, "/containerd.services.version.v1.Version/Version");
        input.extend(frame(HEADERS, END_HEADERS, 1, &encode(&mut enc, &fields)));
        input.extend(frame(DATA, END_STREAM, 1, &[0, 0, 0, 0, 0]));
        let (out, rewritten) = run_all(&input);
        assert_eq!(rewritten, 1, "{bad:?}");
        let seen = server_view(&out);
        assert_eq!(
            seen[2..],
            [
                headers(
                    1,
                    request(
                        b"localhost",
                        "/containerd.services.version.v1.Version/Version"
                    )
                ),
                data(1, END_STREAM, &[0, 0, 0, 0, 0]),
            ],
            "{bad:?}"
        );
        // The frames before the block are untouched bytes.
        assert!(out.starts_with(&start()));
    }
}

/// After one block is re-encoded the server's table no longer matches the client's: later
/// blocks that index into the client's table must still reach the server intact.
#[test]
fn requests_after_a_rewrite_decode_right() {
    let mut enc = Encoder::new();
    let mut input = start();
    let mut expected = Vec::new();
    // The first block passes verbatim and fills the server's table.
    let ok = request(
        b"localhost",
        "/containerd.services.namespaces.v1.Namespaces/List",
    );
    input.extend(frame(HEADERS, END_HEADERS, 1, &encode(&mut enc, &ok)));
    expected.push(headers(1, ok));
    for (i, (authority, path)) in [
        (
            &b"%2Frun%2Fberthd.sock"[..],
            "/containerd.services.version.v1.Version/Version",
        ),
        (
            b"%2Frun%2Fberthd.sock",
            "/containerd.services.version.v1.Version/Version",
        ),
        (
            b"localhost",
            "/containerd.services.containers.v1.Containers/List",
        ),
        (
            b"%2Frun%2Fberthd.sock",
            "/containerd.services.containers.v1.Containers/List",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let stream = 3 + 2 * i as u32;
        let mut fields = request(authority, path);
        fields.push((b"x-call".to_vec(), format!("call {i}").into_bytes()));
        let block = encode(&mut enc, &fields);
        // Later requests index into the client's dynamic table: alone, they do not decode.
        if i > 0 {
            assert!(Decoder::new().decode(&block).is_err());
        }
        input.extend(frame(HEADERS, END_HEADERS, stream, &block));
        input.extend(frame(DATA, END_STREAM, stream, b"payload"));
        let mut fixed = request(b"localhost", path);
        fixed.push((b"x-call".to_vec(), format!("call {i}").into_bytes()));
        expected.push(headers(stream, fixed));
        expected.push(data(stream, END_STREAM, b"payload"));
    }
    let (out, rewritten) = run_all(&input);
    assert_eq!(rewritten, 3);
    assert_eq!(server_view(&out)[2..], expected[..]);
}

#[test]
fn continuation_padding_and_priority() {
    let mut enc = Encoder::new();
    let mut fields = request(
        b"%2Frun%2Fberthd.sock",
        "/containerd.services.version.v1.Version/Version",
    );
    fields.push((b"x-big".to_vec(), vec![b'v'; 300]));
    let block = encode(&mut enc, &fields);
    let (a, rest) = block.split_at(7);
    let (b, c) = rest.split_at(200);
    let priority = [0x80, 0, 0, 0, 0x10];
    let mut payload = vec![4]; // pad length
    payload.extend_from_slice(&priority);
    payload.extend_from_slice(a);
    payload.extend_from_slice(&[0; 4]);
    let mut input = start();
    input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 1, &payload));
    input.extend(frame(CONTINUATION, 0, 1, b));
    input.extend(frame(CONTINUATION, END_HEADERS, 1, c));

    let (out, rewritten) = run_all(&input);
    assert_eq!(rewritten, 1);
    let mut expected = fields.clone();
    expected[3].1 = b"localhost".to_vec();
    assert_eq!(
        server_view(&out)[2..],
        [Seen::Headers {
            stream: 1,
            end_stream: true,
            priority: Some(priority.to_vec()),
            fields: expected,
        }]
    );

    // The same framing with a good authority goes through as it came.
    let mut enc = Encoder::new();
    let mut good = fields.clone();
    good[3].1 = b"localhost".to_vec();
    let block = encode(&mut enc, &good);
    let mut payload = vec![4];
    payload.extend_from_slice(&priority);
    payload.extend_from_slice(&block[..7]);
    payload.extend_from_slice(&[0; 4]);
    let mut input = start();
    input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 1, &payload));
    input.extend(frame(CONTINUATION, 0, 1, &block[7..207]));
    input.extend(frame(CONTINUATION, END_HEADERS, 1, &block[207..]));
    assert_eq!(run_all(&input), (input, 0));
}

/// A re-encoded block larger than a frame is split at the server's 16 KiB frame limit.
#[test]
fn large_rewritten_block_is_split_into_continuations() {
    let mut enc = Encoder::new();
    let mut fields = request(b"/run/berthd.sock", "/x");
    fields.push((b"x-large".to_vec(), vec![b'q'; 40_000]));
    let block = encode(&mut enc, &fields);
    let mut input = start();
    let (a, rest) = block.split_at(16_384);
    let (b, c) = rest.split_at(16_384);
    input.extend(frame(HEADERS, 0, 1, a));
    input.extend(frame(CONTINUATION, 0, 1, b));
    input.extend(frame(CONTINUATION, END_HEADERS, 1, c));
    let (out, _) = run_all(&input);
    let mut expected = fields.clone();
    expected[3].1 = b"localhost".to_vec();
    assert_eq!(server_view(&out)[2..], [headers(1, expected)]);
}

#[test]
fn data_frames_of_every_size_are_untouched() {
    let sizes = [
        0usize, 1, 2, 8, 9, 10, 100, 4095, 4096, 9000, 16_383, 16_384,
    ];
    for bad in [false, true] {
        let mut enc = Encoder::new();
        let mut input = start();
        let authority: &[u8] = if bad {
            b"%2Frun%2Fberthd.sock"
        } else {
            b"localhost"
        };
        input.extend(frame(
            HEADERS,
            END_HEADERS,
            1,
            &encode(&mut enc, &request(authority, "/w")),
        ));
        let mut expected = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            // Payloads that look like frame headers and prefaces must not confuse the scan.
            let payload: Vec<u8> = PREFACE
                .iter()
                .chain(&[0, 0, 4, HEADERS, END_HEADERS, 0, 0, 0, 1])
                .copied()
                .cycle()
                .skip(i)
                .take(n)
                .collect();
            input.extend(frame(DATA, 0, 1, &payload));
            expected.push(data(1, 0, &payload));
        }
        input.extend(frame(DATA, END_STREAM, 1, &[]));
        expected.push(data(1, END_STREAM, &[]));
        let (out, _) = run_all(&input);
        let seen = server_view(&out);
        assert_eq!(seen[3..], expected[..]);
        if !bad {
            assert!(out == input);
        } else {
            // Everything after the header block is the client's bytes.
            let tail = input.len() - expected.iter().map(frame_len).sum::<usize>();
            assert!(out.ends_with(&input[tail..]));
        }
    }
}

fn frame_len(s: &Seen) -> usize {
    match s {
        Seen::Other { payload, .. } => 9 + payload.len(),
        Seen::Headers { .. } => unreachable!(),
    }
}

#[test]
fn malformed_input_passes_through() {
    let mut enc = Encoder::new();
    let good = encode(&mut enc, &request(b"%2Fs.sock", "/a"));
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    cases.push(("http/1.1", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()));
    cases.push(("short preface", b"PRI * HTTP/2.0\r\n".to_vec()));
    let mut v = start();
    v.extend(frame(HEADERS, END_HEADERS | PADDED, 1, &[200, 0x82]));
    cases.push(("padding past the frame", v));
    let mut v = start();
    v.extend(frame(HEADERS, END_HEADERS | PRIORITY, 1, &[0, 0]));
    cases.push(("priority past the frame", v));
    let mut v = start();
    v.extend(frame(HEADERS, END_HEADERS, 1, &[0x80 | 0x7f, 0x7f])); // index past both tables
    v.extend(frame(HEADERS, END_HEADERS, 3, &good));
    cases.push(("bad hpack index", v));
    let mut v = start();
    v.extend(frame(HEADERS, END_HEADERS, 1, &[0x3f, 0xe1, 0x7f])); // table size past 4096
    cases.push(("table size past the limit", v));
    let mut v = start();
    v.extend(frame(CONTINUATION, END_HEADERS, 1, &good));
    cases.push(("continuation without headers", v));
    let mut v = start();
    v.extend(frame(HEADERS, 0, 1, &good[..3]));
    v.extend(frame(DATA, 0, 1, b"in the middle"));
    v.extend(frame(CONTINUATION, END_HEADERS, 1, &good[3..]));
    cases.push(("data inside a header block", v));
    let mut v = start();
    v.extend(frame(HEADERS, 0, 1, &good[..3]));
    v.extend(frame(CONTINUATION, END_HEADERS, 3, &good[3..]));
    cases.push(("continuation on another stream", v));
    let mut v = start();
    v.extend(frame(HEADERS, END_HEADERS, 1, &vec![0; 16_385]));
    cases.push(("frame past 16 KiB", v));
    let mut v = start();
    let huge = encode(&mut Encoder::new(), &{
        let mut f = request(b"%2Fs.sock", "/a");
        f.push((b"x".to_vec(), vec![b'x'; MAX_HEADER_BLOCK]));
        f
    });
    let mut chunks = huge.chunks(16_384).peekable();
    let mut first = true;
    while let Some(c) = chunks.next() {
        let flags = if chunks.peek().is_none() {
            END_HEADERS
        } else {
            0
        };
        v.extend(frame(
            if first { HEADERS } else { CONTINUATION },
            flags,
            1,
            c,
        ));
        first = false;
    }
    v.extend(frame(HEADERS, END_HEADERS, 3, &good));
    cases.push(("header block past the limit", v));
    let mut v = start();
    v.extend(frame(0x5, END_HEADERS, 1, &[0, 0, 0, 2, 0x82]));
    v.extend(frame(HEADERS, END_HEADERS, 3, &good));
    cases.push(("push promise from a client", v));
    let mut v = start();
    v.extend(frame(HEADERS, 0, 1, &good));
    cases.push(("connection ends inside a header block", v));
    let mut v = start();
    v.extend_from_slice(&frame(HEADERS, END_HEADERS, 1, &good)[..12]);
    cases.push(("connection ends inside a frame", v));

    for (name, input) in cases {
        let (out, rewritten) = run_all(&input);
        assert_eq!(rewritten, 0, "{name}");
        assert!(out == input, "{name}: malformed input was changed");
    }
}

/// Malformed input after a rewrite: what was rewritten stays rewritten, the rest passes as sent.
#[test]
fn malformed_input_after_a_rewrite_passes_through() {
    let mut enc = Encoder::new();
    let mut input = start();
    input.extend(frame(
        HEADERS,
        END_HEADERS,
        1,
        &encode(&mut enc, &request(b"%2Fs", "/a")),
    ));
    let (prefix, _) = run(&input, input.len());
    let mut tail = frame(HEADERS, END_HEADERS, 3, &[0x80 | 0x7f, 0x7f]);
    tail.extend(frame(DATA, END_STREAM, 3, b"after"));
    input.extend_from_slice(&tail);
    let (out, rewritten) = run_all(&input);
    assert_eq!(rewritten, 1);
    assert_eq!(out, [prefix, tail].concat());
}

/// Hands out its bytes `step` at a time, returning Pending between reads as a socket would.
struct Trickle {
    data: Vec<u8>,
    pos: usize,
    step: usize,
    toggle: bool,
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.toggle = !self.toggle;
        if self.toggle {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = self
            .step
            .min(self.data.len() - self.pos)
            .min(buf.remaining());
        let start = self.pos;
        buf.put_slice(&self.data[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn adapter_with_split_reads() {
    let mut enc = Encoder::new();
    let mut input = start();
    for (stream, authority) in [
        (1u32, &b"localhost"[..]),
        (3, b"%2Frun%2Fberthd.sock"),
        (5, b"localhost"),
    ] {
        input.extend(frame(
            HEADERS,
            END_HEADERS,
            stream,
            &encode(&mut enc, &request(authority, "/p")),
        ));
        input.extend(frame(DATA, END_STREAM, stream, &vec![7; 20_000][..16_384]));
    }
    let (expected, _) = run(&input, input.len());
    for step in [1, 3, 9, 1000, 1 << 20] {
        for read_size in [1, 8, 100, 64 * 1024] {
            let mut fix = AuthorityFix::new(Trickle {
                data: input.clone(),
                pos: 0,
                step,
                toggle: false,
            });
            let mut out = Vec::new();
            let mut buf = vec![0; read_size];
            loop {
                let n = fix.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
            assert_eq!(fix.rewritten(), 1);
            assert!(out == expected, "step {step}, read size {read_size}");
        }
    }
    let seen = server_view(&expected);
    assert!(matches!(&seen[4], Seen::Headers { fields, .. } if fields[3].1 == b"localhost"));
}
