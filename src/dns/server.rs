//! Sockets and transports: binding with socket2, the UDP receive loops and the TCP server.
//!
//! Why our own loops instead of `hickory_server::Server`: hickory spawns a task per UDP packet
//! and has no TCP connection limit. Here each worker owns one `SO_REUSEPORT` UDP socket and
//! answers in place (receive → handle → send, no task, one reused buffer), and TCP connections
//! are bounded by a semaphore, idle-timed-out and pipelined (answers are flushed when the
//! client's buffered queries are all answered).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::handler::{Handler, Transport};

/// Largest UDP datagram we read. Queries are small, but a short buffer would silently cut a
/// large (malformed or padded) one and change its meaning.
const UDP_RECV_BUFFER: usize = 65_535;
/// Socket receive buffer asked of the kernel, so bursts are queued rather than dropped.
const UDP_SO_RCVBUF: usize = 4 << 20;
/// How often a port-0 address tries to find a port free for both UDP and TCP.
const PORT_PICK_ATTEMPTS: usize = 32;

/// Sockets bound before the runtime starts serving (so a bind failure exits cleanly).
pub struct Bound {
    /// (address, one std socket per worker).
    pub udp: Vec<(SocketAddr, Vec<std::net::UdpSocket>)>,
    /// TCP listeners.
    pub tcp: Vec<(SocketAddr, std::net::TcpListener)>,
}

fn udp_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_port(true)?;
    // Best effort: a smaller buffer still works, it just drops earlier under bursts.
    let _ = s.set_recv_buffer_size(UDP_SO_RCVBUF);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn tcp_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_tcp_nodelay(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// Binds every configured address. Port 0 picks one free port per IP, shared by that IP's UDP
/// and TCP sockets, so a test can read one port back and use both transports.
pub fn bind(udp: &[SocketAddr], tcp: &[SocketAddr], workers: usize) -> anyhow::Result<Bound> {
    use anyhow::Context;
    let mut picked: Vec<(std::net::IpAddr, u16)> = Vec::new();
    let mut bound = Bound {
        udp: Vec::new(),
        tcp: Vec::new(),
    };
    let resolve = |a: SocketAddr, picked: &[(std::net::IpAddr, u16)]| -> SocketAddr {
        match picked.iter().find(|(ip, _)| *ip == a.ip()) {
            Some((_, p)) if a.port() == 0 => SocketAddr::new(a.ip(), *p),
            _ => a,
        }
    };
    for &a in udp {
        let mut first = None;
        if a.port() == 0 && !picked.iter().any(|(ip, _)| *ip == a.ip()) {
            // Find a port free for UDP and, if this IP also listens on TCP port 0, for TCP.
            let wants_tcp = tcp.iter().any(|t| t.ip() == a.ip() && t.port() == 0);
            for _ in 0..PORT_PICK_ATTEMPTS {
                let s = udp_socket(a).with_context(|| format!("failed to bind UDP socket {a}"))?;
                let port = s.local_addr()?.port();
                if !wants_tcp || tcp_listener(SocketAddr::new(a.ip(), port)).is_ok() {
                    picked.push((a.ip(), port));
                    first = Some(s);
                    break;
                }
            }
            if first.is_none() {
                anyhow::bail!("found no port free for both UDP and TCP on {}", a.ip());
            }
        }
        let addr = resolve(a, &picked);
        let mut sockets = Vec::with_capacity(workers);
        sockets.extend(first);
        while sockets.len() < workers {
            sockets.push(
                udp_socket(addr).with_context(|| format!("failed to bind UDP socket {addr}"))?,
            );
        }
        let addr = sockets[0].local_addr()?;
        bound.udp.push((addr, sockets));
    }
    for &a in tcp {
        let addr = resolve(a, &picked);
        let l =
            tcp_listener(addr).with_context(|| format!("failed to bind TCP listener {addr}"))?;
        let addr = l.local_addr()?;
        bound.tcp.push((addr, l));
    }
    Ok(bound)
}

/// Transport limits.
#[derive(Debug, Clone, Copy)]
pub struct TcpLimits {
    /// Concurrent connections.
    pub max_connections: usize,
    /// Idle time allowed between (and within) queries.
    pub idle_timeout: Duration,
}

/// Starts every transport on the current runtime. Tasks end when `shutdown` is cancelled;
/// wait on `tracker` (closed by the caller) to see open TCP connections finish.
pub fn spawn(
    bound: Bound,
    handler: Arc<Handler>,
    limits: TcpLimits,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> io::Result<()> {
    for (addr, sockets) in bound.udp {
        info!(proto = "udp", %addr, sockets = sockets.len(), "listening");
        for s in sockets {
            let s = UdpSocket::from_std(s)?;
            tracker.spawn(serve_udp(s, handler.clone(), shutdown.clone()));
        }
    }
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    for (addr, l) in bound.tcp {
        info!(proto = "tcp", %addr, "listening");
        let l = TcpListener::from_std(l)?;
        tracker.spawn(serve_tcp(
            l,
            handler.clone(),
            limits,
            slots.clone(),
            shutdown.clone(),
            tracker.clone(),
        ));
    }
    Ok(())
}

async fn serve_udp(socket: UdpSocket, handler: Arc<Handler>, shutdown: CancellationToken) {
    let mut buf = vec![0u8; UDP_RECV_BUFFER];
    let mut out = Vec::with_capacity(4096);
    loop {
        let (n, src) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            r = socket.recv_from(&mut buf) => match r {
                Ok(v) => v,
                Err(e) => {
                    // ICMP-induced errors (ECONNREFUSED) and the like concern one peer only.
                    debug!(error = %e, "udp receive error");
                    continue;
                }
            },
        };
        if src.port() == 0 {
            continue; // cannot be answered; never reflect to port 0
        }
        if handler.handle(&buf[..n], src, Transport::Udp, &mut out)
            && let Err(e) = socket.send_to(&out, src).await
        {
            debug!(error = %e, %src, "udp send error");
        }
    }
}

async fn serve_tcp(
    listener: TcpListener,
    handler: Arc<Handler>,
    limits: TcpLimits,
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (stream, src) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!(error = %e, "tcp accept error");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            debug!(%src, "tcp connection limit reached; closing");
            drop(stream);
            continue;
        };
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            if let Err(e) = serve_conn(stream, src, &handler, limits.idle_timeout, &shutdown).await
            {
                debug!(%src, error = %e, "tcp connection ended");
            }
        });
    }
}

/// One TCP connection: length-prefixed messages (RFC 1035 §4.2.2), answered in order.
async fn serve_conn(
    stream: TcpStream,
    src: SocketAddr,
    handler: &Handler,
    idle: Duration,
    shutdown: &CancellationToken,
) -> io::Result<()> {
    let (r, w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut w = BufWriter::new(w);
    let mut msg = Vec::with_capacity(512);
    let mut out = Vec::with_capacity(4096);
    loop {
        // Flush only when no pipelined query is waiting, so a burst is answered in one write.
        if r.buffer().is_empty() {
            w.flush().await?;
        }
        let len = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            r = tokio::time::timeout(idle, r.read_u16()) => match r {
                Ok(Ok(n)) => usize::from(n),
                Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(()), // idle
            },
        };
        msg.resize(len, 0);
        match tokio::time::timeout(idle, r.read_exact(&mut msg)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()), // a client trickling bytes is treated as idle
        }
        if handler.handle(&msg, src, Transport::Tcp, &mut out) {
            w.write_u16(out.len() as u16).await?;
            w.write_all(&out).await?;
        }
    }
}
