//! How an upstream's answer is framed, read from its head as `httparse` found it: the status, the
//! body's delimitation (RFC 9112 §6.3) and whether the connection may be used again. Strict: an
//! answer whose framing a client could read differently is an error, never passed on.

use http::StatusCode;

use crate::base::headers::{OneLength, connection_line_closes};

/// How the body of an upstream's answer is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: an answer to HEAD, or 1xx, 204, 304.
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    UntilClose,
}

/// What an answer's head says of its status, its body and its connection.
pub(crate) struct Interpreted {
    pub status: StatusCode,
    pub framing: Framing,
    pub announced_length: Option<u64>,
    /// The connection may carry another exchange after this answer's body.
    pub reusable: bool,
}

/// Reads a final answer's head, or `None` for an interim answer to skip. One pass over the
/// fields, as read.
pub(crate) fn interpret(
    answer: &httparse::Response<'_, '_>,
    head_request: bool,
) -> Result<Option<Interpreted>, String> {
    let code = answer.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| format!("status {code}"))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err("101 Switching Protocols to a request without an upgrade".into());
    }
    if status.is_informational() {
        return Ok(None);
    }
    let (mut transfer_encoding, mut content_length, mut close) = (false, false, false);
    let mut length = OneLength::default();
    // The last transfer coding named (RFC 9112 §6.3 (4): chunked must be last). A line that is
    // not plain text names no coding this proxy knows, so it is never read as chunked.
    let mut last_coding: Option<&[u8]> = None;
    for field in answer.headers.iter() {
        let (name, value) = (field.name, field.value);
        if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            last_coding = if value.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b)) {
                value.rsplit(|&b| b == b',').next().map(<[u8]>::trim_ascii)
            } else {
                Some(b"")
            };
        } else if name.eq_ignore_ascii_case("content-length") {
            content_length = true;
            length.add(value);
        } else if name.eq_ignore_ascii_case("connection") {
            close |= connection_line_closes(value);
        }
    }
    // HTTP/1.0 answers and `Connection: close` end the connection (RFC 9112 §9.3).
    let mut reusable = answer.version == Some(1) && !close;
    let mut announced_length = None;
    let framing = if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        // No body, whatever the head says. The length it announces (of the body a GET would get)
        // is passed on only as one plain number. An answer that announces a body it must not
        // send ends its connection: were a body to follow after all, in a later packet, it would
        // be read as the next visitor's answer. So does an answer to HEAD that announces no
        // length at all: the GET's body would run until the connection closed (RFC 9112 §6.3
        // (8)), so the upstream meant to close it. A 204 or 304 without a length is the usual
        // one and keeps its connection.
        announced_length = length.get();
        reusable &= match announced_length {
            Some(length) => length == 0 && !transfer_encoding,
            None => !transfer_encoding && !content_length && !head_request,
        };
        Framing::Empty
    } else if transfer_encoding {
        // RFC 9112 §6.3 (3): with `Content-Length` too, the transfer coding frames it, and such an
        // answer "ought to be handled as an error": passed on (without the length), but its
        // connection is not used again.
        if content_length {
            reusable = false;
        }
        if last_coding.is_some_and(|coding| coding.eq_ignore_ascii_case(b"chunked")) {
            Framing::Chunked
        } else {
            reusable = false;
            Framing::UntilClose
        }
    } else if content_length {
        Framing::Length(length.get().ok_or("a Content-Length that is not one number")?)
    } else {
        reusable = false;
        Framing::UntilClose
    };
    Ok(Some(Interpreted { status, framing, announced_length, reusable }))
}
