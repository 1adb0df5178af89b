//! CRI proxy overhead (scripts/bench.sh): the same unary calls over one HTTP/2 connection
//! (as the kubelet keeps one) straight to the runtime and through `ckvault proxy`,
//! interleaved so both see the same machine load.
//! `cargo run --release --example cri_bench -- DIRECT_SOCK PROXY_SOCK [CALLS] [RELAY_SOCK]`
//! RELAY_SOCK: a plain byte relay to the same runtime (scripts/bench.sh runs socat), the
//! floor for any proxy in its own process: what the extra hop itself costs.
//! Prints, per method and path: p50/p99 latency beside the direct call's from the same
//! interleaved calls, the p50 added, and throughput with 16 calls in flight: the median of
//! rounds alternating between the paths (so a burst of load elsewhere on the machine hits
//! all alike), and the median of the per-round ratios to the direct call.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ckvault::internal::capture::cri::{
    ListContainersRequest, ListContainersResponse, RUNTIME, RuntimeClient, VersionRequest,
    VersionResponse, frame, unframe,
};
use http_body_util::{BodyExt, Full};
use prost::Message;

type Sender = hyper::client::conn::http2::SendRequest<
    http_body_util::combinators::BoxBody<Bytes, hyper::Error>,
>;

async fn call<Req: Message, Resp: Message + Default>(
    sender: &mut Sender,
    method: &str,
    req: &Req,
) -> Result<Resp, Box<dyn std::error::Error>> {
    let body = Full::new(frame(req))
        .map_err(|never| match never {})
        .boxed();
    let request = hyper::Request::post(format!("http://localhost{RUNTIME}{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)?;
    sender.ready().await?;
    let resp = sender.send_request(request).await?;
    let collected = resp.into_body().collect().await?;
    Ok(unframe(collected.to_bytes(), 16 << 20).map_err(|e| e.message)?)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(f64::NAN)
}

async fn one(sender: &mut Sender, method: &str) -> Result<(), Box<dyn std::error::Error>> {
    match method {
        "Version" => {
            let _: VersionResponse = call(sender, method, &VersionRequest::default()).await?;
        }
        _ => {
            let _: ListContainersResponse =
                call(sender, method, &ListContainersRequest::default()).await?;
        }
    }
    Ok(())
}

async fn throughput(
    socket: &Path,
    method: &str,
    secs: f64,
) -> Result<f64, Box<dyn std::error::Error>> {
    let sender = RuntimeClient::new(socket).connect().await?;
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let mut s = sender.clone();
        let m = method.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                if one(&mut s, &m).await.is_err() {
                    return Err(());
                }
                n += 1;
            }
            Ok(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await?.map_err(|()| "call failed")?;
    }
    Ok(total as f64 / secs)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    const ROUNDS: usize = 5;
    const ROUND_SECS: f64 = 1.0;
    let args: Vec<String> = std::env::args().collect();
    let (Some(direct), Some(proxy)) = (args.get(1), args.get(2)) else {
        return Err("usage: cri_bench DIRECT_SOCK PROXY_SOCK [CALLS] [RELAY_SOCK]".into());
    };
    let calls: usize = args.get(3).map_or(Ok(2000), |s| s.parse())?;
    // The paths compared with the direct call, first the proxy.
    let mut paths = vec![("ckvault proxy", Path::new(proxy))];
    if let Some(relay) = args.get(4) {
        paths.push(("byte relay (socat)", Path::new(relay)));
    }
    let mut d = RuntimeClient::new(Path::new(direct)).connect().await?;
    let mut conns = Vec::new();
    for (_, sock) in &paths {
        conns.push(RuntimeClient::new(sock).connect().await?);
    }
    println!(
        "{:<15} {:<19} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9} {:>6}",
        "method",
        "path",
        "direct p50",
        "direct p99",
        "path p50",
        "path p99",
        "added p50",
        "direct/s",
        "path/s",
        "ratio"
    );
    for method in ["Version", "ListContainers"] {
        for _ in 0..200 {
            one(&mut d, method).await?;
            for c in conns.iter_mut() {
                one(c, method).await?;
            }
        }
        let mut dl = Vec::with_capacity(calls);
        let mut pl = vec![Vec::with_capacity(calls); paths.len()];
        for _ in 0..calls {
            let t = Instant::now();
            one(&mut d, method).await?;
            dl.push(t.elapsed().as_secs_f64() * 1e6);
            for (c, l) in conns.iter_mut().zip(pl.iter_mut()) {
                let t = Instant::now();
                one(c, method).await?;
                l.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        dl.sort_by(f64::total_cmp);
        let mut dts = Vec::new();
        let mut pts = vec![Vec::new(); paths.len()];
        let mut ratios = vec![Vec::new(); paths.len()];
        for _ in 0..ROUNDS {
            let dt = throughput(Path::new(direct), method, ROUND_SECS).await?;
            dts.push(dt);
            for (k, (_, sock)) in paths.iter().enumerate() {
                let pt = throughput(sock, method, ROUND_SECS).await?;
                if let (Some(p), Some(r)) = (pts.get_mut(k), ratios.get_mut(k)) {
                    p.push(pt);
                    r.push(pt / dt);
                }
            }
        }
        dts.sort_by(f64::total_cmp);
        for (k, (name, _)) in paths.iter().enumerate() {
            let (Some(l), Some(p), Some(r)) = (pl.get_mut(k), pts.get_mut(k), ratios.get_mut(k))
            else {
                continue;
            };
            for v in [&mut *l, &mut *p, &mut *r] {
                v.sort_by(f64::total_cmp);
            }
            println!(
                "{:<15} {:<19} {:>8.0}us {:>8.0}us {:>8.0}us {:>8.0}us {:>8.0}us {:>9.0} {:>9.0} {:>6.2}",
                method,
                name,
                pct(&dl, 0.5),
                pct(&dl, 0.99),
                pct(l, 0.5),
                pct(l, 0.99),
                pct(l, 0.5) - pct(&dl, 0.5),
                pct(&dts, 0.5),
                pct(p, 0.5),
                pct(r, 0.5)
            );
        }
    }
    Ok(())
}
