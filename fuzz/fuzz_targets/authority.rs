//! The HTTP/2 `:authority` rewriter that sits in front of every connection,
//! as a property. Whatever the client sends, however the reads split it:
//!
//! - it never panics, and the output does not depend on the split;
//! - the output is as long as the input, and only bytes inside HEADERS
//!   payloads may differ (before a complete preface, none);
//! - h2 reads the output exactly as it reads the input, except that in a
//!   header block one `:authority` value that `http` refuses may read with
//!   each `/` turned `-`, which `http` then accepts (h2's own frame and
//!   HPACK decoder is the judge, dynamic table and all);
//! - rewriting the output again changes nothing.
//!
//! Input: a first byte (bit 0: put the preface in front of the rest; the
//! other bits seed the read sizes), then the client's bytes.
#![no_main]

use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_core::Stream;
use h2::frame::Frame;
use h2::proto::Error;
use http::uri::Authority;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;

/// A client connection that sends `0` and ignores what it is sent.
struct Wire<'a>(&'a [u8]);

impl AsyncRead for Wire<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.0.len().min(buf.remaining());
        buf.put_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Wire<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// One frame (or stream error) as h2 reads it.
#[derive(Debug, PartialEq)]
enum Read {
    /// A header block: its `:authority`, and everything else about it.
    Headers {
        authority: Option<String>,
        rest: String,
    },
    /// Any other frame, or a stream error.
    Other(String),
}

/// What h2 reads of the frames after the preface, up to the first
/// connection error (after which it reads no more), and that error.
fn h2_reads(frames: &[u8]) -> (Vec<Read>, Option<String>) {
    // The largest frame size h2 allows: every HEADERS frame is read.
    let mut codec = h2::Codec::<_, Bytes>::with_max_recv_frame_size(Wire(frames), 16_777_215);
    let mut cx = Context::from_waker(Waker::noop());
    let mut reads = Vec::new();
    loop {
        match Pin::new(&mut codec).poll_next(&mut cx) {
            Poll::Ready(Some(Ok(Frame::Headers(headers)))) => {
                let (stream, end) = (u32::from(headers.stream_id()), headers.is_end_stream());
                let (mut pseudo, fields) = headers.into_parts();
                let authority = pseudo.authority.take().map(|a| a.to_string());
                let rest = format!("{stream} {end} {pseudo:?} {fields:?}");
                reads.push(Read::Headers { authority, rest });
            }
            Poll::Ready(Some(Ok(frame))) => reads.push(Read::Other(format!("{frame:?}"))),
            Poll::Ready(Some(Err(e @ Error::Reset(..)))) => {
                reads.push(Read::Other(format!("{e:?}")))
            }
            Poll::Ready(Some(Err(e))) => return (reads, Some(format!("{e:?}"))),
            Poll::Ready(None) => return (reads, None),
            Poll::Pending => panic!("an in-memory connection never waits"),
        }
    }
}

/// The payloads of the complete HEADERS frames after the preface.
fn headers_payloads(bytes: &[u8]) -> Vec<Range<usize>> {
    let (mut at, mut found) = (PREFACE.len(), Vec::new());
    while let Some(head) = bytes.get(at..at + 9) {
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let payload = at + 9..at + 9 + len;
        if head[3] == HEADERS && payload.end <= bytes.len() {
            found.push(payload.clone());
        }
        at = payload.end;
    }
    found
}

/// Read sizes from `seed`: from one byte at a time to a few KiB.
fn splits(input: &[u8], seed: u8) -> Vec<&[u8]> {
    let most = [1, 3, 9, 64, 1000, 9000, 20000, usize::MAX][usize::from(seed & 7)];
    let mut state = u32::from(seed) | 0x9e37_7900;
    let (mut rest, mut chunks) = (input, Vec::new());
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (state as usize % most.min(rest.len())) + 1;
        let (now, later) = rest.split_at(n.min(rest.len()));
        chunks.push(now);
        rest = later;
    }
    chunks
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let input = match mode & 1 {
        1 => [PREFACE, rest].concat(),
        _ => rest.to_vec(),
    };
    let output = assetd::fuzzing::rewrite_authority([&input[..]]);
    assert_eq!(output.len(), input.len());
    let split = assetd::fuzzing::rewrite_authority(splits(&input, mode >> 1));
    assert!(
        split == output,
        "the output depends on how reads split the input"
    );
    if input.len() <= 4096 {
        let bytes = assetd::fuzzing::rewrite_authority(input.chunks(1));
        assert!(
            bytes == output,
            "the output differs when read a byte at a time"
        );
    }
    assert!(
        assetd::fuzzing::rewrite_authority([&output[..]]) == output,
        "rewriting the output changes it"
    );
    if output == input {
        return;
    }
    assert!(
        input.starts_with(PREFACE),
        "changed bytes without the preface"
    );
    let payloads = headers_payloads(&input);
    for (at, _) in input
        .iter()
        .zip(&output)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
    {
        assert!(
            payloads.iter().any(|p| p.contains(&at)),
            "byte {at} changed outside a HEADERS payload"
        );
    }
    let (before, before_error) = h2_reads(&input[PREFACE.len()..]);
    let (after, after_error) = h2_reads(&output[PREFACE.len()..]);
    assert_eq!(
        before.len(),
        after.len(),
        "h2 reads another number of frames"
    );
    assert_eq!(before_error, after_error, "h2 stops with another error");
    for (i, (was, now)) in before.iter().zip(&after).enumerate() {
        if was == now {
            continue;
        }
        let (
            Read::Headers {
                authority: Some(was_auth),
                rest: was_rest,
            },
            Read::Headers {
                authority: Some(now_auth),
                rest: now_rest,
            },
        ) = (was, now)
        else {
            panic!("frame {i} reads differently: {was:?} became {now:?}");
        };
        assert_eq!(
            was_rest, now_rest,
            "frame {i}: more than the :authority changed"
        );
        assert_eq!(
            &was_auth.replace('/', "-"),
            now_auth,
            "frame {i}: not a '/' to '-' change"
        );
        assert!(
            Authority::try_from(was_auth.as_str()).is_err(),
            "frame {i}: {was_auth:?} was fine"
        );
        assert!(
            Authority::try_from(now_auth.as_str()).is_ok(),
            "frame {i}: {now_auth:?} is still refused"
        );
    }
});
