//! The "app" of end-to-end tests: sends bounded sequences of HTTP/1.1 GET requests (a new
//! connection each, `connection: close`) and prints one JSON line. Std only.
//!
//! Count mode (default) sends `--requests N` and prints
//!   {"counts":{"v1":18,"v2":2},"errors":0,"statuses":{"200":20},"error_kinds":{},"elapsed_ms":41}
//! where `counts` keys are response bodies (trailing whitespace trimmed). Always exits 0.
//!
//! Until mode (`--until-body BODY --max-wait-ms M`) repeats requests until a body equals BODY
//! and prints {"matched":true,"elapsed_ms":312,"attempts":7}; exits 1 with
//! {"matched":false,...,"last":"..."} when M passes first.
//!
//! Print-body mode (`--print-body`) sends one request and prints its body (for admin pages).
//!
//! The URL host must be an IP literal unless `--connect IP:PORT` says where to connect (then
//! the URL's authority is only the Host header), so no DNS lookup can stall a run. Every
//! request has `--timeout-ms` (default 2000) for connect, write and read together.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const USAGE: &str = "usage: mesh-client --url http://HOST[:PORT]/PATH [--connect IP:PORT]
       [--requests N] [--header NAME:VALUE]... [--timeout-ms T] [--interval-ms I]
       [--until-body BODY --max-wait-ms M] [--print-body]";
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
const UNTIL_MIN_INTERVAL: Duration = Duration::from_millis(20);

struct Options {
    target: SocketAddr,
    authority: String,
    path: String,
    headers: Vec<(String, String)>,
    requests: u64,
    timeout: Duration,
    interval: Duration,
    until: Option<(String, Duration)>,
    print_body: bool,
}

fn parse_options() -> Result<Options, String> {
    let mut url = None;
    let mut connect = None;
    let mut requests = 1;
    let mut headers = Vec::new();
    let mut timeout = Duration::from_millis(2000);
    let mut interval = Duration::ZERO;
    let mut until_body = None;
    let mut max_wait = None;
    let mut print_body = false;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => url = Some(value()?),
            "--connect" => connect = Some(value()?),
            "--requests" => requests = value()?.parse().map_err(|e| format!("{flag}: {e}"))?,
            "--header" => {
                let header = value()?;
                let (name, value) = header
                    .split_once(':')
                    .ok_or_else(|| format!("--header {header:?} is not NAME:VALUE"))?;
                headers.push((name.trim().to_string(), value.trim().to_string()));
            }
            "--timeout-ms" => timeout = millis(&flag, &value()?)?,
            "--interval-ms" => interval = millis(&flag, &value()?)?,
            "--until-body" => until_body = Some(value()?),
            "--max-wait-ms" => max_wait = Some(millis(&flag, &value()?)?),
            "--print-body" => print_body = true,
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    let url = url.ok_or("--url is required")?;
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?}: only http:// URLs"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let target = match connect {
        Some(addr) => addr
            .parse()
            .map_err(|e| format!("--connect {addr:?}: {e}"))?,
        None => {
            let with_port = if authority.contains(':') {
                authority.to_string()
            } else {
                format!("{authority}:80")
            };
            with_port.parse().map_err(|_| {
                format!("URL host {authority:?} is not IP:PORT; use --connect IP:PORT")
            })?
        }
    };
    let until = match (until_body, max_wait) {
        (Some(body), Some(wait)) => Some((body, wait)),
        (None, None) => None,
        _ => return Err("--until-body and --max-wait-ms go together".into()),
    };
    if timeout.is_zero() {
        return Err("--timeout-ms must be positive".into());
    }
    Ok(Options {
        target,
        authority: authority.to_string(),
        path: path.to_string(),
        headers,
        requests,
        timeout,
        interval,
        until,
        print_body,
    })
}

fn millis(flag: &str, text: &str) -> Result<Duration, String> {
    text.parse()
        .map(Duration::from_millis)
        .map_err(|e| format!("{flag}: {e}"))
}

fn main() {
    let options = match parse_options() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("mesh-client: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let request = build_request(&options);
    let code = match &options.until {
        _ if options.print_body => print_body(&options, &request),
        Some((body, max_wait)) => until(&options, &request, body, *max_wait),
        None => count(&options, &request),
    };
    std::process::exit(code);
}

fn build_request(options: &Options) -> Vec<u8> {
    let mut head = format!("GET {} HTTP/1.1\r\n", options.path);
    if !options
        .headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        head.push_str(&format!("host: {}\r\n", options.authority));
    }
    head.push_str("user-agent: mesh-client\r\naccept: */*\r\n");
    for (name, value) in &options.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("connection: close\r\n\r\n");
    head.into_bytes()
}

/// Print-body mode: one request; the body goes to stdout; exits 0 only on a 200.
fn print_body(options: &Options, request: &[u8]) -> i32 {
    match send(options.target, request, options.timeout) {
        Ok((status, body)) => {
            println!("{body}");
            if status == 200 { 0 } else { 1 }
        }
        Err(e) => {
            eprintln!("mesh-client: {e}");
            1
        }
    }
}

fn count(options: &Options, request: &[u8]) -> i32 {
    let started = Instant::now();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    let mut error_kinds: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors = 0u64;
    for i in 0..options.requests {
        if i > 0 && !options.interval.is_zero() {
            std::thread::sleep(options.interval);
        }
        match send(options.target, request, options.timeout) {
            Ok((status, body)) => {
                *statuses.entry(status.to_string()).or_default() += 1;
                *counts.entry(body).or_default() += 1;
            }
            Err(e) => {
                errors += 1;
                *error_kinds.entry(e).or_default() += 1;
            }
        }
    }
    let summary = serde_json::json!({
        "counts": counts,
        "errors": errors,
        "statuses": statuses,
        "error_kinds": error_kinds,
        "elapsed_ms": started.elapsed().as_millis() as u64,
    });
    println!("{summary}");
    0
}

fn until(options: &Options, request: &[u8], wanted: &str, max_wait: Duration) -> i32 {
    let started = Instant::now();
    let deadline = started + max_wait;
    let mut attempts = 0u64;
    loop {
        let now = Instant::now();
        let timeout = options.timeout.min(deadline.saturating_duration_since(now));
        if timeout.is_zero() {
            break;
        }
        attempts += 1;
        let last = match send(options.target, request, timeout) {
            Ok((_, body)) if body == wanted => {
                let summary = serde_json::json!({
                    "matched": true,
                    "elapsed_ms": started.elapsed().as_millis() as u64,
                    "attempts": attempts,
                });
                println!("{summary}");
                return 0;
            }
            Ok((status, body)) => format!("{status} {body}"),
            Err(e) => format!("error: {e}"),
        };
        let pause = options.interval.max(UNTIL_MIN_INTERVAL);
        if Instant::now() + pause >= deadline {
            let summary = serde_json::json!({
                "matched": false,
                "elapsed_ms": started.elapsed().as_millis() as u64,
                "attempts": attempts,
                "last": last,
            });
            println!("{summary}");
            return 1;
        }
        std::thread::sleep(pause);
    }
    let summary = serde_json::json!({
        "matched": false,
        "elapsed_ms": started.elapsed().as_millis() as u64,
        "attempts": attempts,
    });
    println!("{summary}");
    1
}

/// One request on a fresh connection: `(status, body with trailing whitespace trimmed)`, or a
/// short error description.
fn send(target: SocketAddr, request: &[u8], timeout: Duration) -> Result<(u16, String), String> {
    let deadline = Instant::now() + timeout;
    let remaining = || {
        let left = deadline.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left).ok_or("timeout")
    };
    let mut stream = TcpStream::connect_timeout(&target, timeout).map_err(|e| describe(&e))?;
    stream
        .set_write_timeout(Some(remaining()?))
        .map_err(|e| describe(&e))?;
    stream.write_all(request).map_err(|e| describe(&e))?;
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(response) = parse_response(&buffer, false)? {
            return Ok(response);
        }
        stream
            .set_read_timeout(Some(remaining()?))
            .map_err(|e| describe(&e))?;
        let n = stream.read(&mut chunk).map_err(|e| describe(&e))?;
        if n == 0 {
            return parse_response(&buffer, true)?.ok_or_else(|| {
                if buffer.is_empty() {
                    "connection closed without a response".to_string()
                } else {
                    "connection closed mid-response".to_string()
                }
            });
        }
        buffer.extend_from_slice(&chunk[..n]);
        if buffer.len() > MAX_RESPONSE_BYTES {
            return Err("response too large".into());
        }
    }
}

fn describe(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => "timeout".into(),
        _ => e.to_string(),
    }
}

/// `Some` once `buffer` holds a whole response; at `eof` a body without length ends there.
fn parse_response(buffer: &[u8], eof: bool) -> Result<Option<(u16, String)>, String> {
    let Some(head_end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]);
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("bad status line")?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(value.parse::<usize>().map_err(|_| "bad content-length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let body = &buffer[head_end + 4..];
    let body = if chunked {
        match decode_chunked(body)? {
            Some(body) => body,
            None if eof => return Err("connection closed mid-chunk".into()),
            None => return Ok(None),
        }
    } else if let Some(length) = content_length {
        if body.len() < length {
            return if eof {
                Err("connection closed mid-body".into())
            } else {
                Ok(None)
            };
        }
        body[..length].to_vec()
    } else if eof {
        body.to_vec()
    } else {
        return Ok(None);
    };
    Ok(Some((
        status,
        String::from_utf8_lossy(&body).trim_end().to_string(),
    )))
}

/// The decoded body once the terminating chunk has arrived.
fn decode_chunked(mut data: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(Some(body));
        }
        if data.len() < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_complete_by_length_chunks_or_eof() {
        let sized = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nv1\n";
        assert_eq!(parse_response(sized, false), Ok(Some((200, "v1".into()))));
        assert_eq!(parse_response(&sized[..sized.len() - 1], false), Ok(None));

        let chunked = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n\
                        3\r\nno \r\n7\r\nhealthy\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked, false),
            Ok(Some((503, "no healthy".into())))
        );
        assert_eq!(parse_response(&chunked[..70], false), Ok(None));

        let until_eof = b"HTTP/1.0 200 OK\r\n\r\nv2";
        assert_eq!(parse_response(until_eof, false), Ok(None));
        assert_eq!(
            parse_response(until_eof, true),
            Ok(Some((200, "v2".into())))
        );
        assert!(parse_response(b"garbage\r\n\r\n", true).is_err());
    }
}
