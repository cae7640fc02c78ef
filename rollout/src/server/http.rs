//! A minimal HTTP/1.1 client for JSON requests to an inference server: one connection per request
//! (`Connection: close`), bodies with `Content-Length` or chunked transfer encoding, read and
//! write timeouts. Plain `http://` only: inference servers are reached on a trusted network or
//! through a local proxy.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// A parsed `http://host[:port][/prefix]` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or address.
    pub host: String,
    /// TCP port (80 when the URL names none).
    pub port: u16,
    /// Path prefix without a trailing `/` (empty for the root).
    pub prefix: String,
}

impl Endpoint {
    /// Parses `url`; anything but `http://host[:port][/path]` is an error message.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("`{url}`: only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("`{url}`: bad port `{p}`"))?,
            ),
            None => (authority, 80),
        };
        if host.is_empty() {
            return Err(format!("`{url}`: no host"));
        }
        Ok(Endpoint {
            host: host.to_string(),
            port,
            prefix: path.trim_end_matches('/').to_string(),
        })
    }
}

/// A failed exchange: whether trying again may help, and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    /// Connection problems, timeouts and 5xx / 429 answers are transient.
    pub transient: bool,
    /// One line.
    pub message: String,
}

impl HttpError {
    fn transient(message: String) -> Self {
        HttpError {
            transient: true,
            message,
        }
    }
    fn fatal(message: String) -> Self {
        HttpError {
            transient: false,
            message,
        }
    }
}

/// Sends `method path` with an optional JSON `body` and returns the response body of a 2xx
/// answer.
pub fn request(
    endpoint: &Endpoint,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<String, HttpError> {
    let addr = (endpoint.host.as_str(), endpoint.port)
        .to_socket_addrs()
        .map_err(|e| HttpError::transient(format!("cannot resolve {}: {e}", endpoint.host)))?
        .next()
        .ok_or_else(|| HttpError::transient(format!("no address for {}", endpoint.host)))?;
    let io = |what: &str, e: std::io::Error| {
        HttpError::transient(format!("{what} {}:{}: {e}", endpoint.host, endpoint.port))
    };
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| io("cannot connect to", e))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|_| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| io("cannot configure the connection to", e))?;
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {}{path} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\n\
         Accept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        endpoint.prefix,
        endpoint.host,
        endpoint.port,
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|_| stream.write_all(body.as_bytes()))
        .and_then(|_| stream.flush())
        .map_err(|e| io("cannot send to", e))?;
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader
        .read_line(&mut status_line)
        .map_err(|e| io("no answer from", e))?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            HttpError::transient(format!(
                "not an HTTP answer from {}:{}: {:?}",
                endpoint.host,
                endpoint.port,
                status_line.trim_end()
            ))
        })?;
    let (mut length, mut chunked) = (None, false);
    loop {
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| io("cut answer from", e))?;
        let line = line.trim_end();
        if n == 0 || line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding")
                && value.to_ascii_lowercase().contains("chunked")
            {
                chunked = true;
            }
        }
    }
    let bytes = if chunked {
        read_chunked(&mut reader).map_err(|e| io("cut chunked answer from", e))?
    } else if let Some(n) = length {
        let mut buf = vec![0u8; n];
        reader
            .read_exact(&mut buf)
            .map_err(|e| io("cut answer from", e))?;
        buf
    } else {
        let mut buf = Vec::new();
        reader
            .read_to_end(&mut buf)
            .map_err(|e| io("cut answer from", e))?;
        buf
    };
    let text = String::from_utf8_lossy(&bytes).into_owned();
    match status {
        200..=299 => Ok(text),
        429 | 500..=599 => Err(HttpError::transient(format!(
            "{method} {path}: HTTP {status}: {}",
            first_line(&text)
        ))),
        _ => Err(HttpError::fatal(format!(
            "{method} {path}: HTTP {status}: {}",
            first_line(&text)
        ))),
    }
}

fn first_line(text: &str) -> &str {
    let line = text.lines().next().unwrap_or("");
    match line.char_indices().nth(300) {
        Some((i, _)) => &line[..i],
        None => line,
    }
}

fn read_chunked(reader: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size)?;
        let hex = size.trim().split(';').next().unwrap_or("");
        let n = usize::from_str_radix(hex, 16)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunk size"))?;
        if n == 0 {
            // Trailers (if any) end with an empty line.
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                    return Ok(out);
                }
            }
        }
        let start = out.len();
        out.resize(start + n, 0);
        reader.read_exact(&mut out[start..])?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_or_say_why_not() {
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:8080").unwrap(),
            Endpoint {
                host: "127.0.0.1".into(),
                port: 8080,
                prefix: String::new()
            }
        );
        assert_eq!(
            Endpoint::parse("http://gpu-box/api/").unwrap().prefix,
            "/api"
        );
        assert_eq!(Endpoint::parse("http://gpu-box/api/").unwrap().port, 80);
        for bad in ["https://x", "127.0.0.1:80", "http://:80", "http://h:port"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn chunked_bodies_are_joined() {
        let raw = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\n\r\n";
        let body = read_chunked(&mut &raw[..]).unwrap();
        assert_eq!(body, b"Wikipedia");
    }
}
