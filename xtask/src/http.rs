//! A minimal HTTP/1.1 client over `std::net::TcpStream`, enough for xtask's few requests.
//!
//! Each request uses its own connection with `Connection: close`, so a response ends at end of
//! file; bodies are decoded from `Content-Length` or chunked transfer encoding.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Reason phrase (may be empty).
    pub reason: String,
    /// Header names (lower-cased) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The decoded body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header with this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// `GET path` on a new connection (`Connection: close`, read and write timeouts `timeout`) and
/// reads the whole response.
pub fn get(address: SocketAddr, path: &str, timeout: Duration) -> Result<Response> {
    let mut stream = connect(address, timeout)?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .with_context(|| format!("sending the request to {address}"))?;
    read_response(stream, address)
}

/// A new connection to `address` with read and write timeouts `timeout`.
fn connect(address: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&address, timeout)
        .with_context(|| format!("connecting to {address}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

/// Reads a `Connection: close` response to its end and parses it.
fn read_response(mut stream: TcpStream, address: SocketAddr) -> Result<Response> {
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the response from {address}"))?;
    parse_response(&raw)
}

/// The value of an unlabelled metric in the Prometheus text format.
pub fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let mut parts = line.split_whitespace();
            (parts.next()? == name).then(|| parts.next()?.parse().ok())?
        })
}

/// Sends `POST path` with a JSON body and reads the whole response.
pub fn post_json(
    address: SocketAddr,
    path: &str,
    extra_headers: &[(&str, &str)],
    body: &str,
    timeout: Duration,
) -> Result<Response> {
    let stream = send_post_json(address, path, extra_headers, body, timeout)?;
    read_response(stream, address)
}

/// Sends `POST path` with a JSON body on a new connection (`Connection: close`, read and write
/// timeouts `timeout`) and returns the connection, to read the response as the caller needs
/// (whole with [`post_json`], or in part to hang up mid-stream).
pub fn send_post_json(
    address: SocketAddr,
    path: &str,
    extra_headers: &[(&str, &str)],
    body: &str,
    timeout: Duration,
) -> Result<TcpStream> {
    let mut stream = connect(address, timeout)?;
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in extra_headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream
        .write_all(request.as_bytes())
        .with_context(|| format!("sending the request to {address}"))?;
    Ok(stream)
}

/// Parses a complete HTTP/1.1 response (status line, headers, body up to end of input).
pub fn parse_response(raw: &[u8]) -> Result<Response> {
    let Some(head_end) = find(raw, b"\r\n\r\n") else {
        bail!(
            "the response ended before its headers did ({} bytes received)",
            raw.len()
        );
    };
    let head = std::str::from_utf8(&raw[..head_end]).context("response headers are not UTF-8")?;
    let rest = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1.x response: {status_line:?}");
    }
    let status: u16 = parts
        .next()
        .unwrap_or_default()
        .parse()
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let reason = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            bail!("bad header line {line:?}");
        };
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let mut response = Response {
        status,
        reason,
        headers,
        body: Vec::new(),
    };
    let chunked = response
        .header("transfer-encoding")
        .is_some_and(|value| value.to_ascii_lowercase().contains("chunked"));
    response.body = if chunked {
        decode_chunked(rest)?
    } else if let Some(length) = response.header("content-length") {
        let length: usize = length
            .parse()
            .with_context(|| format!("bad content-length {length:?}"))?;
        if rest.len() < length {
            bail!("the body ended after {} of {length} bytes", rest.len());
        }
        rest[..length].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(response)
}

/// Decodes a chunked transfer-encoded body (extensions and trailers ignored).
pub fn decode_chunked(mut input: &[u8]) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = find(input, b"\r\n") else {
            bail!("chunked body ended inside a chunk-size line");
        };
        let size_line = std::str::from_utf8(&input[..line_end]).context("bad chunk-size line")?;
        let size_text = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        input = &input[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if input.len() < size + 2 {
            bail!("chunked body ended inside a chunk");
        }
        body.extend_from_slice(&input[..size]);
        input = &input[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_content_length_response() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}";
        let response = parse_response(raw).unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.reason, "OK");
        assert_eq!(response.header("content-type"), Some("application/json"));
        assert_eq!(response.body, b"{\"a\":1}");
    }

    #[test]
    fn parses_a_chunked_response() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        let response = parse_response(raw).unwrap();
        assert_eq!(response.body, b"hello, world");
    }

    #[test]
    fn reads_to_end_without_length() {
        let raw = b"HTTP/1.1 503 Service Unavailable\r\n\r\ndown";
        let response = parse_response(raw).unwrap();
        assert_eq!(response.status, 503);
        assert_eq!(response.reason, "Service Unavailable");
        assert_eq!(response.body, b"down");
    }

    #[test]
    fn rejects_truncated_responses() {
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(decode_chunked(b"5\r\nhel").is_err());
        assert!(decode_chunked(b"zz\r\n").is_err());
    }
}
