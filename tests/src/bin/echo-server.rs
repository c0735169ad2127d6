//! A tiny HTTP/1.1 backend for end-to-end tests: answers every request with 200 and a fixed
//! body (e.g. its version), and `/headers*` with the request it received as JSON, so tests can
//! assert routing and header rewrites. Std only; one thread per connection; keep-alive.
//!
//! usage: echo-server --body TEXT [--listen ADDR] [--max-lifetime-secs N]
//!
//! Prints `echo-server listening on ADDR` once bound. Exits on SIGTERM/SIGKILL (default
//! action) or after `--max-lifetime-secs` (default 3600, 0 = no limit) so a server orphaned
//! by a killed test run does not live forever.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const USAGE: &str = "usage: echo-server --body TEXT [--listen ADDR] [--max-lifetime-secs N]";
const MAX_CONNECTIONS: usize = 512;
const MAX_HEADER_BYTES: usize = 64 * 1024;
const MAX_BODY_BYTES: u64 = 1024 * 1024;
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

struct Options {
    listen: String,
    body: String,
    max_lifetime: Option<Duration>,
}

fn parse_options() -> Result<Options, String> {
    let mut listen = "0.0.0.0:9080".to_string();
    let mut body = None;
    let mut max_lifetime = Some(Duration::from_secs(3600));
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = value()?,
            "--body" => body = Some(value()?),
            "--max-lifetime-secs" => {
                let secs: u64 = value()?.parse().map_err(|e| format!("{flag}: {e}"))?;
                max_lifetime = (secs > 0).then(|| Duration::from_secs(secs));
            }
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    Ok(Options {
        listen,
        body: body.ok_or("--body is required")?,
        max_lifetime,
    })
}

fn main() {
    let options = match parse_options() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("echo-server: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let listener = match TcpListener::bind(&options.listen) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("echo-server: cannot listen on {}: {e}", options.listen);
            std::process::exit(1);
        }
    };
    if let Some(lifetime) = options.max_lifetime {
        std::thread::spawn(move || {
            std::thread::sleep(lifetime);
            eprintln!("echo-server: max lifetime {lifetime:?} reached, exiting");
            std::process::exit(0);
        });
    }
    let local = listener
        .local_addr()
        .map_or(options.listen.clone(), |a| a.to_string());
    println!("echo-server listening on {local}");
    let _ = std::io::stdout().flush();

    let body: Arc<str> = options.body.into();
    let open = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            continue; // dropping the stream closes it
        }
        open.fetch_add(1, Ordering::Relaxed);
        let (body, open) = (Arc::clone(&body), Arc::clone(&open));
        std::thread::spawn(move || {
            let _ = serve_connection(stream, &body);
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

struct Request {
    method: String,
    path: String,
    keep_alive: bool,
    /// Lowercased names; repeated headers joined with ",".
    headers: BTreeMap<String, String>,
}

fn serve_connection(stream: TcpStream, body: &str) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    stream.set_write_timeout(Some(IDLE_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    while let Some(request) = read_request(&mut reader)? {
        let (content_type, payload) = if request.path.starts_with("/headers") {
            let echo = serde_json::json!({
                "method": request.method,
                "path": request.path,
                "headers": request.headers,
            });
            ("application/json", echo.to_string())
        } else {
            ("text/plain", body.to_string())
        };
        let connection = if request.keep_alive {
            "keep-alive"
        } else {
            "close"
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
             connection: {connection}\r\n\r\n",
            payload.len()
        );
        if request.method == "HEAD" {
            writer.write_all(head.as_bytes())?;
        } else {
            writer.write_all(format!("{head}{payload}").as_bytes())?;
        }
        writer.flush()?;
        if !request.keep_alive {
            break;
        }
    }
    Ok(())
}

/// Reads one request (discarding its body); `None` at a clean end of the connection.
fn read_request(reader: &mut BufReader<TcpStream>) -> std::io::Result<Option<Request>> {
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(path), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid("bad request line"));
    };
    let (method, path, version) = (method.to_string(), path.to_string(), version.to_string());
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    let mut header_bytes = 0;
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        header_bytes += n;
        if n == 0 || header_bytes > MAX_HEADER_BYTES {
            return Err(invalid("truncated or oversized headers"));
        }
        let trimmed = line.trim_end_matches(['\r', '\n']);
        if trimmed.is_empty() {
            break;
        }
        let (name, value) = trimmed
            .split_once(':')
            .ok_or_else(|| invalid("bad header"))?;
        headers
            .entry(name.trim().to_ascii_lowercase())
            .and_modify(|v| {
                v.push(',');
                v.push_str(value.trim());
            })
            .or_insert_with(|| value.trim().to_string());
    }
    let connection = headers
        .get("connection")
        .map(|v| v.to_ascii_lowercase())
        .unwrap_or_default();
    let keep_alive = if version == "HTTP/1.0" {
        connection.contains("keep-alive")
    } else {
        !connection.contains("close")
    };
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        discard_chunked(reader)?;
    } else if let Some(length) = headers.get("content-length") {
        let length: u64 = length.parse().map_err(|_| invalid("bad content-length"))?;
        if length > MAX_BODY_BYTES {
            return Err(invalid("request body too large"));
        }
        std::io::copy(&mut reader.by_ref().take(length), &mut std::io::sink())?;
    }
    Ok(Some(Request {
        method,
        path,
        keep_alive,
        headers,
    }))
}

fn discard_chunked(reader: &mut BufReader<TcpStream>) -> std::io::Result<()> {
    let mut line = String::new();
    let mut total = 0u64;
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let size_text = line.trim().split(';').next().unwrap_or("");
        let size = u64::from_str_radix(size_text, 16)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunk size"))?;
        total += size;
        if total > MAX_BODY_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "request body too large",
            ));
        }
        if size == 0 {
            // Trailers end with an empty line.
            loop {
                line.clear();
                if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                    return Ok(());
                }
            }
        }
        std::io::copy(&mut reader.by_ref().take(size + 2), &mut std::io::sink())?;
    }
}
