//! The HTTP side of `serve`: GET /metrics, GET / (a short page), 404 otherwise;
//! basic auth on every path when configured; HTTP/1.1 over TCP or TLS.

use std::{future::Future, rc::Rc, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header, Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{cmd::serve::web::Auth, render::prometheus::Format};

/// A slow client gets this long for its request headers (and a TLS handshake).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

const INDEX: &str = "<!DOCTYPE html>\n<html><head><title>tcpstate</title></head><body>\n\
<h1>tcpstate</h1>\n<p>TCP state metrics: CLOSE_WAIT sockets by process, time in each state \
(TIME_WAIT included), TIME_WAIT destinations, and tcpstate's own losses.</p>\n\
<p><a href=\"/metrics\">Metrics</a></p>\n</body></html>\n";

/// What answers /metrics: renders a scrape in the asked format.
pub trait Metrics {
    fn scrape(&self, fmt: Format) -> impl Future<Output = Result<String, String>>;
}

fn response(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(ctype) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

async fn handle<M: Metrics>(
    req: Request<Incoming>,
    metrics: Rc<M>,
    auth: Arc<Auth>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let header_str = |h: header::HeaderName| req.headers().get(h).and_then(|v| v.to_str().ok());
    if !auth.check(header_str(header::AUTHORIZATION)).await {
        let mut r = response(
            StatusCode::UNAUTHORIZED,
            "text/plain; charset=utf-8",
            "Unauthorized\n",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"tcpstate\""),
        );
        return Ok(r);
    }
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    Ok(match req.uri().path() {
        "/metrics" if get => {
            let fmt = Format::negotiate(header_str(header::ACCEPT));
            match metrics.scrape(fmt).await {
                Ok(text) => response(StatusCode::OK, fmt.content_type(), text),
                Err(e) => response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain; charset=utf-8",
                    format!("scrape failed: {e}\n"),
                ),
            }
        }
        "/" if get => response(StatusCode::OK, "text/html; charset=utf-8", INDEX),
        _ => response(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "Not Found\n",
        ),
    })
}

/// Serves one connection until it closes.
pub async fn connection<M, S>(io: S, metrics: Rc<M>, auth: Arc<Auth>)
where
    M: Metrics + 'static,
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let svc = hyper::service::service_fn(move |req| handle(req, metrics.clone(), auth.clone()));
    let r = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(CLIENT_TIMEOUT)
        .serve_connection(TokioIo::new(io), svc)
        .await;
    if let Err(e) = r {
        log::debug!("connection ended: {e}");
    }
}
