//! Just enough HTTP/1.x for a scrape endpoint (sans-IO): find the end of a request head,
//! route its request line, build a `Connection: close` response.

/// Longest request head accepted; a longer one gets 431.
pub const MAX_HEAD: usize = 8192;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Metrics,
    Ready,
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Length of the request head (through the blank line) if `buf` holds all of it.
pub fn head_len(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Routes a request head by its request line; `head` says whether the body is omitted.
pub fn route(head: &[u8]) -> (Route, bool) {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(line) else {
        return (Route::BadRequest, false);
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return (Route::BadRequest, false);
    };
    if !version.starts_with("HTTP/1.") {
        return (Route::BadRequest, false);
    }
    let path = target.split('?').next().unwrap_or_default();
    let known = matches!(path, "/metrics" | "/ready");
    let head_only = method == "HEAD";
    let r = match (method, path) {
        ("GET" | "HEAD", "/metrics") => Route::Metrics,
        ("GET" | "HEAD", "/ready") => Route::Ready,
        _ if known => Route::MethodNotAllowed,
        _ => Route::NotFound,
    };
    (r, head_only)
}

/// A complete response that closes the connection.
pub fn response(status: u16, content_type: &str, body: &str, head_only: bool) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(body);
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_end_of_the_head() {
        assert_eq!(head_len(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(head_len(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
    }

    #[test]
    fn routes_by_method_and_path() {
        let r = |s: &str| route(s.as_bytes());
        assert_eq!(r("GET /metrics HTTP/1.1\r\n\r\n"), (Route::Metrics, false));
        assert_eq!(
            r("GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            (Route::Metrics, false)
        );
        assert_eq!(r("HEAD /ready HTTP/1.1\r\n\r\n"), (Route::Ready, true));
        assert_eq!(r("GET /ready HTTP/1.1\r\n\r\n"), (Route::Ready, false));
        assert_eq!(
            r("POST /metrics HTTP/1.1\r\n\r\n").0,
            Route::MethodNotAllowed
        );
        assert_eq!(r("GET / HTTP/1.1\r\n\r\n").0, Route::NotFound);
        assert_eq!(r("GET /metricsx HTTP/1.1\r\n\r\n").0, Route::NotFound);
        assert_eq!(r("GET /metrics\r\n\r\n").0, Route::BadRequest);
        assert_eq!(r("GET /metrics SPDY/3\r\n\r\n").0, Route::BadRequest);
        assert_eq!(route(b"GET /\xff HTTP/1.1\r\n\r\n").0, Route::BadRequest);
    }

    #[test]
    fn responses_have_length_and_close() {
        let r = String::from_utf8(response(200, "text/plain", "hello", false)).unwrap();
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Length: 5\r\n"));
        assert!(r.contains("Connection: close\r\n"));
        assert!(r.ends_with("\r\n\r\nhello"));
        let h = String::from_utf8(response(405, "text/plain", "no", true)).unwrap();
        assert!(h.contains("Allow: GET, HEAD\r\n"));
        assert!(h.ends_with("Content-Length: 2\r\nConnection: close\r\nAllow: GET, HEAD\r\n\r\n"));
    }
}
