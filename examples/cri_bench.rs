//! CRI proxy overhead (scripts/bench.sh): the same unary calls over one HTTP/2 connection
//! (as the kubelet keeps one) straight to the runtime and through `ckvault proxy`,
//! interleaved so both see the same machine load.
//! `cargo run --release --example cri_bench -- DIRECT_SOCK PROXY_SOCK [CALLS]`
//! Prints, per method: p50/p99 latency of each path, the p50 added by the proxy, and
//! throughput with 16 calls in flight: the median of rounds alternating between the two
//! paths (so a burst of load elsewhere on the machine hits both alike), and the median of
//! the per-round ratios.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ckvault::capture::cri::{
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
    let args: Vec<String> = std::env::args().collect();
    let (Some(direct), Some(proxy)) = (args.get(1), args.get(2)) else {
        return Err("usage: cri_bench DIRECT_SOCK PROXY_SOCK [CALLS]".into());
    };
    let calls: usize = args.get(3).map_or(Ok(2000), |s| s.parse())?;
    let mut d = RuntimeClient::new(Path::new(direct)).connect().await?;
    let mut p = RuntimeClient::new(Path::new(proxy)).connect().await?;
    println!(
        "{:<15} {:>10} {:>10} {:>10} {:>10} {:>12} {:>12} {:>12} {:>8}",
        "method",
        "direct p50",
        "direct p99",
        "proxy p50",
        "proxy p99",
        "added p50",
        "direct/s",
        "proxy/s",
        "ratio"
    );
    const ROUNDS: usize = 5;
    const ROUND_SECS: f64 = 1.0;
    for method in ["Version", "ListContainers"] {
        for _ in 0..200 {
            one(&mut d, method).await?;
            one(&mut p, method).await?;
        }
        let (mut dl, mut pl) = (Vec::with_capacity(calls), Vec::with_capacity(calls));
        for _ in 0..calls {
            let t = Instant::now();
            one(&mut d, method).await?;
            dl.push(t.elapsed().as_secs_f64() * 1e6);
            let t = Instant::now();
            one(&mut p, method).await?;
            pl.push(t.elapsed().as_secs_f64() * 1e6);
        }
        dl.sort_by(f64::total_cmp);
        pl.sort_by(f64::total_cmp);
        let (mut dts, mut pts, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let dt = throughput(Path::new(direct), method, ROUND_SECS).await?;
            let pt = throughput(Path::new(proxy), method, ROUND_SECS).await?;
            dts.push(dt);
            pts.push(pt);
            ratios.push(pt / dt);
        }
        for v in [&mut dts, &mut pts, &mut ratios] {
            v.sort_by(f64::total_cmp);
        }
        let (dt, pt) = (pct(&dts, 0.5), pct(&pts, 0.5));
        println!(
            "{:<15} {:>8.0}us {:>8.0}us {:>8.0}us {:>8.0}us {:>10.0}us {:>12.0} {:>12.0} {:>8.2}",
            method,
            pct(&dl, 0.5),
            pct(&dl, 0.99),
            pct(&pl, 0.5),
            pct(&pl, 0.99),
            pct(&pl, 0.5) - pct(&dl, 0.5),
            dt,
            pt,
            pct(&ratios, 0.5)
        );
    }
    Ok(())
}
