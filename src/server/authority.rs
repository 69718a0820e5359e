//! Makes `grpcurl -plaintext -unix /abs/path.sock` work: the grpc-go inside
//! grpcurl 1.8.6 sends the socket path as the HTTP/2 `:authority`, and h2
//! resets every such stream as malformed, since an authority cannot hold `/`.
//! [`FixAuthority`] wraps each accepted connection and, in the client to
//! server direction only, rewrites such a value in place, `/` to `-`, before
//! h2 reads it. The write side is untouched.
//!
//! Invariant: it never alters anything h2 would accept. Only an `:authority`
//! that `http::uri::Authority` rejects and accepts once its `/` are `-` is
//! changed; every other byte passes through as it came. The new value has the
//! same length and, Huffman-coded, the same encoded length (`/` and `-` both
//! have 6-bit codes), so frame lengths and both HPACK dynamic tables stay in
//! step; later requests that refer to the entry by index get h2's stored,
//! rewritten value.
//!
//! Limits: only a HEADERS frame with END_HEADERS and at most `MAX_HEADERS`
//! bytes is inspected, and only literals that name `:authority` by static
//! index 1 (as grpc-go does), of at most `MAX_AUTHORITY` bytes. A block
//! continued in CONTINUATION frames, a name given literally or by dynamic
//! index, or anything that fails to parse passes through unchanged, for h2
//! to reject as before.

use std::future::Future as _;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tonic::codegen::http::uri::Authority;
use tonic::transport::server::{Connected, UdsConnectInfo};

use super::idle::{Activity, IdleClock};

/// What an HTTP/2 client sends first (RFC 9113 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Length, type, flags and stream id (RFC 9113 4.1).
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const DATA: u8 = 0x0;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Largest HEADERS payload held back for inspection, in bytes; h2 accepts
/// 16 KiB frames unless configured otherwise. Larger ones pass unchanged.
const MAX_HEADERS: usize = 64 * 1024;
/// Largest `:authority` string inspected, in encoded bytes: a unix socket
/// path is at most 107 bytes, and this bounds the Huffman decoder's work.
const MAX_AUTHORITY: usize = 255;
/// `:authority` in the HPACK static table (RFC 7541 Appendix A).
const AUTHORITY_INDEX: usize = 1;
/// Bytes read from the socket at a time while frames are parsed.
const CHUNK: usize = 8 * 1024;

/// An accepted connection whose incoming `:authority` values are fixed as
/// the module docs say.
#[derive(Debug)]
pub struct FixAuthority {
    inner: UnixStream,
    state: State,
    /// Parsed bytes not yet handed to the reader.
    parsed: BytesMut,
    /// The connection's place in its user's count, released on drop.
    _slot: Option<super::accept::Slot>,
    /// When a client that has not sent the HTTP/2 preface yet is cut off:
    /// a connection that never speaks must not hold a slot for ever.
    handshake: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When a connection with no call open and nothing but pings from the
    /// client is cut off.
    idle: Option<IdleClock>,
    /// What handlers learn of the connection: the peer, and the count of
    /// open calls the idle clock reads.
    info: ConnInfo,
}

/// What handlers learn of a connection (tonic puts it in each request's
/// extensions).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The peer's address and credentials.
    pub uds: UdsConnectInfo,
    /// The connection's open calls.
    pub(super) activity: Arc<Activity>,
}

impl FixAuthority {
    /// Wraps a freshly accepted connection (nothing read from it yet).
    pub fn new(inner: UnixStream) -> Self {
        let info = ConnInfo {
            uds: inner.connect_info(),
            activity: Arc::default(),
        };
        Self {
            inner,
            state: State::Preface(0),
            parsed: BytesMut::new(),
            _slot: None,
            handshake: None,
            idle: None,
            info,
        }
    }

    /// The same, read as ended once it has had no call open and no frame
    /// but pings from the client for `timeout`.
    pub(super) fn with_idle_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.idle = Some(IdleClock::new(self.info.activity.clone(), timeout));
        self
    }

    /// The same, read as ended if the preface has not arrived within
    /// `timeout`.
    pub(super) fn with_handshake_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.handshake = Some(Box::pin(tokio::time::sleep(timeout)));
        self
    }

    /// The same, holding `slot` for as long as the connection is open.
    pub(super) fn with_slot(mut self, slot: Option<super::accept::Slot>) -> Self {
        self._slot = slot;
        self
    }
}

impl Connected for FixAuthority {
    type ConnectInfo = ConnInfo;

    /// The peer's address and credentials, which handlers check.
    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for FixAuthority {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(deadline) = &mut this.handshake {
            if !matches!(this.state, State::Preface(_)) {
                this.handshake = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                // No preface in time: the connection reads as ended.
                return Poll::Ready(Ok(()));
            }
        }
        if let Some(idle) = &mut this.idle
            && idle.poll_expired(cx)
        {
            // Idle too long: the connection reads as ended.
            return Poll::Ready(Ok(()));
        }
        while this.parsed.is_empty() && buf.remaining() > 0 {
            if matches!(this.state, State::PassThrough) {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            // Read into a chunk of our own: the parser may hold bytes back.
            let mut chunk = [0; CHUNK];
            let mut raw = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut raw))?;
            if raw.filled().is_empty() {
                // End of file: from now on the socket reports it directly.
                this.state.finish(&mut this.parsed);
            } else if this.state.feed(raw.filled(), &mut this.parsed)
                && let Some(idle) = &mut this.idle
            {
                idle.touch();
            }
        }
        let n = this.parsed.len().min(buf.remaining());
        buf.put_slice(&this.parsed[..n]);
        this.parsed.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for FixAuthority {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Where the parser is in the client's bytes. Only a HEADERS payload is
/// ever held back; everything else is passed on as soon as it is seen.
#[derive(Debug)]
enum State {
    /// This many bytes of the preface have matched.
    Preface(usize),
    /// A frame header, of which this many bytes have arrived.
    FrameHeader([u8; FRAME_HEADER_LEN], usize),
    /// This many payload bytes are left of a frame that is not inspected.
    Skip(usize),
    /// A HEADERS payload, held until all `len` bytes are in.
    Headers {
        flags: u8,
        len: usize,
        payload: Vec<u8>,
    },
    /// Not HTTP/2, or the end: bytes pass through as they come.
    PassThrough,
}

impl State {
    /// Parses `input`, appending what may go on to h2 to `out`; whether a
    /// frame other than a PING began in it.
    fn feed(&mut self, mut input: &[u8], out: &mut BytesMut) -> bool {
        let mut active = false;
        while !input.is_empty() {
            input = self.step(input, out, &mut active);
        }
        active
    }

    /// Parses a prefix of `input` (at least one byte unless a frame's
    /// payload is empty); returns the rest.
    fn step<'a>(&mut self, input: &'a [u8], out: &mut BytesMut, active: &mut bool) -> &'a [u8] {
        match self {
            State::Preface(seen) => {
                let (now, rest) = input.split_at(input.len().min(PREFACE.len() - *seen));
                out.extend_from_slice(now);
                let (matched, seen) = (PREFACE[*seen..].starts_with(now), *seen + now.len());
                *self = match (matched, seen == PREFACE.len()) {
                    (false, _) => State::PassThrough,
                    (true, false) => State::Preface(seen),
                    (true, true) => State::FrameHeader([0; FRAME_HEADER_LEN], 0),
                };
                rest
            }
            State::FrameHeader(header, have) => {
                let (now, rest) = input.split_at(input.len().min(FRAME_HEADER_LEN - *have));
                header[*have..*have + now.len()].copy_from_slice(now);
                *have += now.len();
                out.extend_from_slice(now);
                if *have == FRAME_HEADER_LEN {
                    // Only a request's frames count as activity: pings,
                    // settings and unknown frames keep nothing open.
                    *active |= matches!(header[3], DATA | HEADERS | CONTINUATION);
                    *self = State::payload(*header);
                }
                rest
            }
            State::Skip(left) => {
                let (now, rest) = input.split_at(input.len().min(*left));
                out.extend_from_slice(now);
                *left -= now.len();
                if *left == 0 {
                    *self = State::FrameHeader([0; FRAME_HEADER_LEN], 0);
                }
                rest
            }
            State::Headers {
                flags,
                len,
                payload,
            } => {
                let (now, rest) = input.split_at(input.len().min(*len - payload.len()));
                payload.extend_from_slice(now);
                if payload.len() == *len {
                    fix_headers(*flags, payload);
                    out.extend_from_slice(payload);
                    *self = State::FrameHeader([0; FRAME_HEADER_LEN], 0);
                }
                rest
            }
            State::PassThrough => {
                out.extend_from_slice(input);
                &[]
            }
        }
    }

    /// The state for the payload of the frame with this header.
    fn payload(header: [u8; FRAME_HEADER_LEN]) -> State {
        let [l0, l1, l2, kind, flags, ..] = header;
        let len = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
        if kind == HEADERS && flags & END_HEADERS != 0 && len <= MAX_HEADERS {
            State::Headers {
                flags,
                len,
                payload: Vec::with_capacity(len),
            }
        } else {
            State::Skip(len)
        }
    }

    /// At end of input: a partial HEADERS payload goes on unchanged.
    fn finish(&mut self, out: &mut BytesMut) {
        if let State::Headers { payload, .. } = self {
            out.extend_from_slice(payload);
        }
        *self = State::PassThrough;
    }
}

/// What h2 reads of a client that sends `chunks` in successive reads: the
/// parser alone, without a socket (for the tests and fuzz targets).
pub(crate) fn rewrite<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let (mut state, mut out) = (State::Preface(0), BytesMut::new());
    for chunk in chunks {
        state.feed(chunk, &mut out);
    }
    state.finish(&mut out);
    out.to_vec()
}

/// Fixes the `:authority` in a complete HEADERS payload, or changes nothing.
fn fix_headers(flags: u8, payload: &mut [u8]) {
    let Some(block) = header_block(flags, payload) else {
        return;
    };
    // Work on a copy so that a block failing to parse halfway stays as it was.
    let mut fixed = block.to_vec();
    if fix_block(&mut fixed).is_some() {
        block.copy_from_slice(&fixed);
    }
}

/// The header block fragment: the payload without padding and priority
/// fields (RFC 9113 6.2).
fn header_block(flags: u8, payload: &mut [u8]) -> Option<&mut [u8]> {
    let (mut start, mut end) = (0, payload.len());
    if flags & PADDED != 0 {
        start = 1;
        end = end.checked_sub(usize::from(*payload.first()?))?;
    }
    if flags & PRIORITY != 0 {
        start += 5;
    }
    payload.get_mut(start..end)
}

/// Walks an HPACK header block (RFC 7541 6), fixing `:authority` literals;
/// `None` if it does not parse.
fn fix_block(block: &mut [u8]) -> Option<()> {
    let mut at = 0;
    while let Some(&first) = block.get(at) {
        at = match first {
            0x80..=0xff => integer(block, at, 7)?.1,   // indexed field
            0x40..=0x7f => fix_literal(block, at, 6)?, // literal, incremental indexing
            0x20..=0x3f => integer(block, at, 5)?.1,   // dynamic table size update
            0x00..=0x1f => fix_literal(block, at, 4)?, // literal, without or never indexed
        };
    }
    Some(())
}

/// Fixes the literal field at `at` if it names `:authority` by index;
/// returns where the next field starts.
fn fix_literal(block: &mut [u8], at: usize, prefix: u32) -> Option<usize> {
    let (name, mut at) = integer(block, at, prefix)?;
    if name == 0 {
        at = string(block, at)?.1.end;
    }
    let (huffman, value) = string(block, at)?;
    if name == AUTHORITY_INDEX {
        fix_authority(block.get_mut(value.clone())?, huffman)?;
    }
    Some(value.end)
}

/// The integer at `at` with a `prefix`-bit prefix (RFC 7541 5.1), and
/// where it ends. More than four continuation bytes (2^28) count as
/// unparsable: no length in a 64 KiB block needs them.
fn integer(block: &[u8], mut at: usize, prefix: u32) -> Option<(usize, usize)> {
    let max = (1 << prefix) - 1;
    let mut value = usize::from(*block.get(at)?) & max;
    at += 1;
    if value < max {
        return Some((value, at));
    }
    for shift in [0, 7, 14, 21] {
        let byte = *block.get(at)?;
        at += 1;
        value += usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((value, at));
        }
    }
    None
}

/// The string at `at` (RFC 7541 5.2): whether it is Huffman-coded, and
/// where its bytes are.
fn string(block: &[u8], at: usize) -> Option<(bool, Range<usize>)> {
    let huffman = *block.get(at)? & 0x80 != 0;
    let (len, start) = integer(block, at, 7)?;
    let end = start.checked_add(len)?;
    (end <= block.len()).then_some((huffman, start..end))
}

/// Rewrites an `:authority` string in place if that makes h2 accept it;
/// `None` if Huffman decoding fails or the length would change.
fn fix_authority(raw: &mut [u8], huffman: bool) -> Option<()> {
    if raw.len() > MAX_AUTHORITY {
        return Some(());
    }
    let value = if huffman {
        huffman_decode(raw)?
    } else {
        raw.to_vec()
    };
    let Some(fixed) = fixed_authority(&value) else {
        return Some(());
    };
    let encoded = if huffman {
        huffman_encode(&fixed)
    } else {
        fixed
    };
    // INVARIANT: same length, or the frame and the two dynamic tables would
    // no longer match.
    (encoded.len() == raw.len()).then(|| raw.copy_from_slice(&encoded))
}

/// `value` with each `/` as `-`, if h2 rejects `value` and accepts that.
fn fixed_authority(value: &[u8]) -> Option<Vec<u8>> {
    if !value.contains(&b'/') || Authority::try_from(value).is_ok() {
        return None;
    }
    let fixed: Vec<u8> = value
        .iter()
        .map(|&b| if b == b'/' { b'-' } else { b })
        .collect();
    Authority::try_from(fixed.as_slice())
        .is_ok()
        .then_some(fixed)
}

/// Decodes a Huffman string (RFC 7541 5.2); `None` for a code that is not
/// in the table (or EOS) or padding that is not under 8 one bits.
fn huffman_decode(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len() * 8 / 5);
    let (mut code, mut len) = (0u32, 0u8);
    for bit in raw
        .iter()
        .flat_map(|&byte| (0..8).rev().map(move |i| byte >> i & 1))
    {
        (code, len) = (code << 1 | u32::from(bit), len + 1);
        // A linear search: strings are short (MAX_AUTHORITY).
        if let Some(symbol) =
            (0..=255).find(|&s| LENGTHS[usize::from(s)] == len && CODES[usize::from(s)] == code)
        {
            out.push(symbol);
            (code, len) = (0, 0);
        } else if len == 30 {
            return None;
        }
    }
    (len < 8 && code == (1 << len) - 1).then_some(out)
}

/// Huffman-encodes `value`, padding with one bits (RFC 7541 5.2).
fn huffman_encode(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let (mut bits, mut len) = (0u64, 0u32);
    for &byte in value {
        let code_len = LENGTHS[usize::from(byte)];
        bits = bits << code_len | u64::from(CODES[usize::from(byte)]);
        len += u32::from(code_len);
        while len >= 8 {
            len -= 8;
            out.push((bits >> len) as u8); // the oldest 8 of the pending bits
        }
    }
    if len > 0 {
        out.push((bits << (8 - len) | 0xff >> len) as u8);
    }
    out
}

/// The HPACK Huffman code of each octet, as RFC 7541 Appendix B lists it in
/// hex (EOS, 30 one bits, is left out: it may only appear as padding).
const CODES: [u32; 256] = [
    0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7, 0xfffffe8,
    0xffffea, 0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec, 0xfffffed,
    0xfffffee, 0xfffffef, 0xffffff0, 0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3, 0xffffff4,
    0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9, 0xffffffa, 0xffffffb, 0x14, 0x3f8,
    0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa, 0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa, 0x16, 0x17, 0x18,
    0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc, 0x20, 0xffb,
    0x3fc, 0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
    0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72, 0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0,
    0x1ffc, 0x3ffc, 0x22, 0x7ffd, 0x3, 0x23, 0x4, 0x24, 0x5, 0x25, 0x26, 0x27, 0x6, 0x74, 0x75,
    0x28, 0x29, 0x2a, 0x7, 0x2b, 0x76, 0x2c, 0x8, 0x9, 0x2d, 0x77, 0x78, 0x79, 0x7a, 0x7b, 0x7ffe,
    0x7fc, 0x3ffd, 0x1ffd, 0xffffffc, 0xfffe6, 0x3fffd2, 0xfffe7, 0xfffe8, 0x3fffd3, 0x3fffd4,
    0x3fffd5, 0x7fffd9, 0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc, 0x7fffdd, 0x7fffde, 0xffffeb,
    0x7fffdf, 0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3,
    0x7fffe4, 0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef, 0x3fffda,
    0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc, 0x7fffe8, 0x7fffe9, 0x1fffde, 0x7fffea, 0x3fffdd,
    0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb, 0x7fffec, 0x1fffe0, 0x1fffe1, 0x3fffe0,
    0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef, 0xfffea, 0x3fffe2, 0x3fffe3, 0x3fffe4,
    0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1, 0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7,
    0x7ffff2, 0x3fffe8, 0x1ffffec, 0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf,
    0x3ffffe5, 0xfffff1, 0x1ffffed, 0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7,
    0x7ffffe2, 0xfffff2, 0x1fffe4, 0x1fffe5, 0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4,
    0x7ffffe5, 0xfffec, 0xfffff3, 0xfffed, 0x1fffe6, 0x3fffe9, 0x1fffe7, 0x1fffe8, 0x7ffff3,
    0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4, 0xfffff5, 0x3ffffea, 0x7ffff4, 0x3ffffeb,
    0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea, 0x7ffffeb,
    0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee, 0x7ffffef, 0x7fffff0, 0x3ffffee,
];
/// Length in bits of each code in [`CODES`].
const LENGTHS: [u8; 256] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
];

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What grpcurl 1.8.6 sent for `-plaintext -unix /tmp/authcap/s.sock list`:
    /// preface, SETTINGS, WINDOW_UPDATE, HEADERS whose `:authority` is
    /// Huffman-coded at bytes 102..116, DATA.
    const CAPTURE: &str = "\
        505249202a20485454502f322e300d0a0d0a534d0d0a0d0a0000000400000000000000000401000000000000\
        74010400000001838645ad626b2b22f6165a0a4498f52fdc23a2b9c6bee2d9dcb66d2cb4148931ea63716cee\
        5b36965a0a4498f564aa53ff418e6134d6c0ed4ce41d6c21741c9d7f5f8b1d75d0620d263d4c4d65647a999a\
        cac96d9431dc2bbcbb8a4d65645a63b015da6970ad217bff40027465864d833505b11f000008000000000001\
        00000000033a012a";
    /// `-tmp-authcap-s.sock`, Huffman-coded by python-hpack.
    const FIXED: &str = "5934d6b0ed4ce41d6b21741c9d7f";

    fn capture() -> (Vec<u8>, Vec<u8>) {
        let input = hex::decode(CAPTURE).unwrap();
        let mut expected = input.clone();
        expected[102..116].copy_from_slice(&hex::decode(FIXED).unwrap());
        (input, expected)
    }

    /// The preface, then one frame on stream 1.
    fn conn(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        [PREFACE, &len[1..], &[kind, flags, 0, 0, 0, 1], payload].concat()
    }

    /// `:method: GET` (indexed), then a literal of kind `first` (name index
    /// in its low bits) with `value`.
    fn block(first: u8, value: &[u8], huffman: bool) -> Vec<u8> {
        let value = if huffman {
            huffman_encode(value)
        } else {
            value.to_vec()
        };
        let len = u8::try_from(value.len()).unwrap() | if huffman { 0x80 } else { 0 };
        [&[0x82, first, len], &value[..]].concat()
    }

    #[test]
    fn fixes_captured_grpcurl_authority_however_reads_split() {
        let (input, expected) = capture();
        assert_eq!(rewrite(input.chunks(1)), expected);
        for at in 0..=input.len() {
            let (a, b) = input.split_at(at);
            assert_eq!(rewrite([a, b]), expected, "split at {at}");
        }
    }

    #[test]
    fn fixes_every_literal_kind_plain_and_huffman() {
        // With incremental indexing, without indexing, never indexed.
        for first in [0x41, 0x01, 0x11] {
            for huffman in [false, true] {
                let input = conn(HEADERS, END_HEADERS, &block(first, b"/run/a.sock", huffman));
                let fixed = conn(HEADERS, END_HEADERS, &block(first, b"-run-a.sock", huffman));
                assert_eq!(rewrite([&input[..]]), fixed, "{first:#x} {huffman}");
            }
        }
    }

    #[test]
    fn fixes_between_priority_and_padding() {
        let flags = END_HEADERS | PADDED | PRIORITY;
        let payload =
            |value: &[u8]| [&[3, 0, 0, 0, 3, 15], &block(0x41, value, true)[..], &[0; 3]].concat();
        let fixed = conn(HEADERS, flags, &payload(b"-a.sock"));
        assert_eq!(
            rewrite([&conn(HEADERS, flags, &payload(b"/a.sock"))[..]]),
            fixed
        );
    }

    #[test]
    fn leaves_everything_else_unchanged() {
        let bad = block(0x41, b"/a.sock", true);
        let cases = [
            conn(HEADERS, END_HEADERS, &block(0x41, b"localhost:50051", true)),
            conn(HEADERS, END_HEADERS, &block(0x41, b"/still bad", false)),
            conn(HEADERS, END_HEADERS, &block(0x44, b"/a.sock", false)), // :path
            conn(HEADERS, 0, &bad),                                      // CONTINUATION follows
            conn(0x0, END_HEADERS, &bad),                                // DATA
            conn(HEADERS, END_HEADERS, &[&bad[..], &[0x41, 0x85]].concat()), // truncated
            conn(
                HEADERS,
                END_HEADERS,
                &[bad.clone(), vec![0x82; MAX_HEADERS]].concat(),
            ),
            conn(HEADERS, END_HEADERS, &bad)[..40].to_vec(), // ends mid-frame
            [
                b"GET / HTTP/1.1\r\n\r\n",
                &conn(HEADERS, END_HEADERS, &bad)[..],
            ]
            .concat(),
        ];
        for (i, input) in cases.iter().enumerate() {
            assert_eq!(&rewrite(input.chunks(3)), input, "case {i}");
        }
    }

    #[test]
    fn huffman_matches_rfc_7541_examples() {
        for (text, code) in [
            ("www.example.com", "f1e3c2e5f23a6ba0ab90f4ff"),
            ("custom-value", "25a849e95bb8e8b4bf"),
            (
                "Mon, 21 Oct 2013 20:13:21 GMT",
                "d07abe941054d444a8200595040b8166e082a62d1bff",
            ),
            (
                "https://www.example.com",
                "9d29ad171863c78f0b97c8e9ae82ae43d3",
            ),
        ] {
            assert_eq!(hex::encode(huffman_encode(text.as_bytes())), code);
            assert_eq!(
                huffman_decode(&hex::decode(code).unwrap()).unwrap(),
                text.as_bytes()
            );
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(huffman_decode(&huffman_encode(&all)).unwrap(), all);
        // Padding of 8 ones, padding of zeros, EOS.
        for bad in [&[0xff][..], &[0x00], &[0xff; 4]] {
            assert_eq!(huffman_decode(bad), None);
        }
    }

    #[tokio::test]
    async fn wrapper_fixes_reads_passes_writes_and_reports_credentials() {
        let not_h2 = b"GET / HTTP/1.1\r\n\r\n".repeat(1000);
        for (input, expected) in [capture(), (not_h2.clone(), not_h2)] {
            let (mut client, server) = UnixStream::pair().unwrap();
            let mut server = FixAuthority::new(server);
            assert!(server.connect_info().uds.peer_cred.is_some());
            let writer = tokio::spawn(async move {
                for chunk in input.chunks(7) {
                    client.write_all(chunk).await.unwrap();
                }
                client.shutdown().await.unwrap();
                client
            });
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, expected);
            server.write_all(b"pong").await.unwrap();
            let mut pong = [0; 4];
            writer.await.unwrap().read_exact(&mut pong).await.unwrap();
            assert_eq!(&pong, b"pong");
        }
    }
}
