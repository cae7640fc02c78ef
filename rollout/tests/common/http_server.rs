//! A minimal HTTP/1.1 server for tests that stand in for an inference server: one request per
//! connection, JSON answers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

/// What answers a request: `(method, path, body) -> (status, answer)`.
type Handler = dyn Fn(&str, &str, &[u8]) -> (u16, String) + Send + Sync;

/// Serves every connection to a fresh 127.0.0.1 port on its own thread with `handle(method,
/// path, body) -> (status, answer)`; returns the server's URL.
pub fn serve<F>(handle: F) -> String
where
    F: Fn(&str, &str, &[u8]) -> (u16, String) + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::sync::Arc::new(handle);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let handle = handle.clone();
            std::thread::spawn(move || answer(stream, &*handle));
        }
    });
    url
}

fn answer(stream: TcpStream, handle: &Handler) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let mut length = 0;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).unwrap();
        if h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).unwrap();
    let (status, answer) = handle(method, path, &body);
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{answer}",
        answer.len()
    );
}

/// The token-id prompt of a `/v1/completions` request, which must ask for one token (as
/// `ServerPolicy` does).
pub fn one_token_prompt(req: &serde_json::Value) -> Vec<u32> {
    assert_eq!(req["max_tokens"], 1);
    req["prompt"]
        .as_array()
        .expect("a token-id prompt")
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}
