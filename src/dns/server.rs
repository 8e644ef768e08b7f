//! Sockets and transports: binding with socket2, the UDP receive loops and the TCP server.
//!
//! Why our own loops instead of `hickory_server::Server`: hickory spawns a task per UDP packet
//! and has no TCP connection limit. Here each worker owns one `SO_REUSEPORT` UDP socket and
//! answers in place (receive → handle → send, no task, reused buffers; on Linux in batches of up
//! to 32 datagrams with `recvmmsg`/`sendmmsg`), and TCP connections hold a slot of a
//! [`ConnTable`] (the quietest gives way under pressure), are idle- and write-timed-out and
//! pipelined (answers are flushed when the client's buffered queries are all answered).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::conn_limit::{ConnSlot, ConnTable};
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

/// Binds a plain UDP socket — *without* `SO_REUSEPORT` — on `addr`, notes the address it got
/// and closes it again.
///
/// Our workers share one port through `SO_REUSEPORT`, and the kernel lets *any* socket of the
/// same user join such a group: a second geosteer (or anything else) started with the same
/// UDP address would bind silently and take a share of the queries. A socket without the
/// option cannot share: its bind fails with `EADDRINUSE` while anyone holds the port (with or
/// without `SO_REUSEPORT`), and on port 0 the kernel picks a port nobody holds (with the
/// option, port 0 may land in another process's group). So this probe runs before the group
/// is bound; the group then binds the port the probe proved free.
fn udp_exclusive_probe(addr: SocketAddr) -> io::Result<SocketAddr> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())?;
    s.local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("UDP socket without an IP address"))
}

/// The error for a UDP address another process holds (or any other bind error).
fn udp_bind_error(addr: SocketAddr, e: io::Error) -> anyhow::Error {
    if e.kind() == io::ErrorKind::AddrInUse {
        anyhow::anyhow!(
            "failed to bind UDP socket {addr}: address already in use by another process \
             (geosteer shares a port only among its own workers)"
        )
    } else {
        anyhow::Error::new(e).context(format!("failed to bind UDP socket {addr}"))
    }
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
                // The kernel's pick for a socket without SO_REUSEPORT: a port nobody holds.
                let free = udp_exclusive_probe(a).map_err(|e| udp_bind_error(a, e))?;
                if wants_tcp && tcp_listener(free).is_err() {
                    continue;
                }
                // Taken between the probe and now: try another port.
                if let Ok(s) = udp_socket(free) {
                    picked.push((a.ip(), free.port()));
                    first = Some(s);
                    break;
                }
            }
            if first.is_none() {
                anyhow::bail!("found no port free for both UDP and TCP on {}", a.ip());
            }
        }
        let addr = resolve(a, &picked);
        if first.is_none() && a.port() != 0 {
            // A given port: refuse it if another process holds it (see udp_exclusive_probe).
            udp_exclusive_probe(addr).map_err(|e| udp_bind_error(addr, e))?;
        }
        let mut sockets = Vec::with_capacity(workers);
        sockets.extend(first);
        while sockets.len() < workers {
            sockets.push(udp_socket(addr).map_err(|e| udp_bind_error(addr, e))?);
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

/// Transport limits (the slot rule is explained in [`super::conn_limit`]).
#[derive(Debug, Clone, Copy)]
pub struct TcpLimits {
    /// Concurrent connections; when all are in use, the quietest gives way to a new one.
    pub max_connections: usize,
    /// Idle time allowed between (and within) queries.
    pub idle_timeout: Duration,
    /// Share of one source (IPv6: /64) once more than half the slots are in use; 0 = none.
    pub max_per_source: usize,
    /// How long handing answers to the kernel may wait for a client that does not read.
    pub write_timeout: Duration,
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
    // One table for all listeners: the limits are per server, not per address.
    let table = ConnTable::new(limits.max_connections, limits.max_per_source);
    for (addr, l) in bound.tcp {
        info!(proto = "tcp", %addr, "listening");
        let l = TcpListener::from_std(l)?;
        tracker.spawn(serve_tcp(
            l,
            handler.clone(),
            limits,
            table.clone(),
            shutdown.clone(),
            tracker.clone(),
        ));
    }
    Ok(())
}

/// Receives, answers and sends one datagram at a time (the portable path).
#[cfg(not(target_os = "linux"))]
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

/// Receives up to [`mmsg::BATCH`] datagrams with one `recvmmsg`, answers them in place and sends
/// the answers with one `sendmmsg`: two system calls per batch instead of two per query.
#[cfg(target_os = "linux")]
async fn serve_udp(socket: UdpSocket, handler: Arc<Handler>, shutdown: CancellationToken) {
    use std::os::fd::AsRawFd;
    use tokio::io::Interest;

    let fd = socket.as_raw_fd();
    let mut batch = mmsg::Batch::new();
    // One cancellation future for the whole loop: it registers its waiter once, instead of
    // once per batch.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    'serve: loop {
        tokio::select! {
            biased;
            _ = &mut cancelled => break,
            r = socket.readable() => if let Err(e) = r {
                // Only when the I/O driver is gone (runtime shutdown): nothing more to serve.
                debug!(error = %e, "udp socket no longer pollable");
                break;
            },
        }
        batch.clear();
        let r = socket.try_io(Interest::READABLE, || {
            let n = batch.recv(fd)?;
            if n < mmsg::BATCH {
                // recvmmsg (non-blocking) stops short only when the queue is empty (or on an
                // error, which is reported by the next call). Saying WouldBlock clears the
                // readiness, so the next round waits for a new datagram instead of spending
                // a system call to learn that the queue is empty. Tokio does not clear it if
                // a datagram arrived meanwhile, so none is left waiting.
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(())
        });
        match r {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                // ICMP-induced errors (ECONNREFUSED) and the like concern one peer only.
                debug!(error = %e, "udp receive error");
                continue;
            }
        }
        batch.answer(&handler);

        // Send every answer: resume after a partial sendmmsg, wait for room on EAGAIN, and
        // skip (with a debug log) only an answer the kernel refuses outright.
        let mut sent = 0;
        while sent < batch.pending() {
            match socket.try_io(Interest::WRITABLE, || batch.send(fd, sent)) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    tokio::select! {
                        biased;
                        _ = &mut cancelled => break 'serve,
                        r = socket.writable() => if let Err(e) = r {
                            debug!(error = %e, "udp socket no longer pollable");
                            break 'serve;
                        },
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // sendmmsg fails only when its first datagram fails: drop that one answer.
                    debug!(error = %e, dst = %batch.destination(sent), "udp send error");
                    sent += 1;
                }
            }
        }
    }
}

/// Batched datagram I/O with `recvmmsg`/`sendmmsg` (Linux).
#[cfg(target_os = "linux")]
mod mmsg {
    use std::io;
    use std::mem::{self, MaybeUninit};
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    use std::os::fd::RawFd;
    use std::ptr;

    use super::{Handler, Transport, UDP_RECV_BUFFER};

    /// Datagrams received (and answers sent) per system call.
    pub const BATCH: usize = 32;

    /// Buffers reused for every batch of one socket: nothing is allocated per datagram.
    ///
    /// The kernel's `mmsghdr`/`iovec` arrays hold raw pointers into these buffers; they are
    /// rebuilt on the stack for each call, so this struct owns no pointers and stays `Send`.
    pub struct Batch {
        /// `BATCH` receive buffers of `UDP_RECV_BUFFER` bytes, back to back. Zeroed pages are
        /// mapped lazily, so only the bytes datagrams actually fill become resident.
        bufs: Box<[u8]>,
        /// Source address of each received datagram, in the kernel's form: the answer goes
        /// back to it unchanged.
        addrs: Box<[libc::sockaddr_storage]>,
        addr_lens: [libc::socklen_t; BATCH],
        /// Length of each received datagram.
        lens: [usize; BATCH],
        /// Datagrams received by the last `recv`.
        received: usize,
        /// Answer buffer of each datagram.
        outs: Vec<Vec<u8>>,
        /// Answers to send: (datagram index, destination), in arrival order.
        pending: Vec<(usize, SocketAddr)>,
    }

    impl Batch {
        pub fn new() -> Self {
            Batch {
                bufs: vec![0u8; BATCH * UDP_RECV_BUFFER].into_boxed_slice(),
                // SAFETY: sockaddr_storage is plain C data (integers and byte arrays), for which
                // all-zero bytes are a valid value.
                addrs: (0..BATCH)
                    .map(|_| unsafe { mem::zeroed::<libc::sockaddr_storage>() })
                    .collect(),
                addr_lens: [0; BATCH],
                lens: [0; BATCH],
                received: 0,
                outs: (0..BATCH).map(|_| Vec::with_capacity(4096)).collect(),
                pending: Vec::with_capacity(BATCH),
            }
        }

        /// Forgets the previous batch.
        pub fn clear(&mut self) {
            self.received = 0;
            self.pending.clear();
        }

        /// One non-blocking `recvmmsg` of up to `BATCH` datagrams; returns how many arrived.
        pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
            let mut iovs = [MaybeUninit::<libc::iovec>::uninit(); BATCH];
            // SAFETY: mmsghdr is plain C data (integers and raw pointers); all-zero bytes are a
            // valid value (null pointers, zero lengths and flags).
            let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
            let slots = self.bufs.chunks_exact_mut(UDP_RECV_BUFFER);
            for (((buf, iov), hdr), addr) in slots
                .zip(&mut iovs)
                .zip(&mut hdrs)
                .zip(self.addrs.iter_mut())
            {
                let iov = iov.write(libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: buf.len(),
                });
                hdr.msg_hdr.msg_iov = iov;
                hdr.msg_hdr.msg_iovlen = 1;
                hdr.msg_hdr.msg_name = ptr::from_mut(addr).cast();
                hdr.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as _;
            }
            // SAFETY: `hdrs` holds BATCH headers, each naming one initialised iovec (in `iovs`)
            // that covers a distinct UDP_RECV_BUFFER-byte slot of `self.bufs`, and one distinct
            // sockaddr_storage of `self.addrs` with its true size. Those buffers are borrowed
            // mutably for this whole function, so they outlive the call and nothing else
            // reads or writes them meanwhile; the kernel writes at most the given lengths.
            // No control buffer, no timeout (null); MSG_DONTWAIT makes the call non-blocking.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    hdrs.as_mut_ptr(),
                    BATCH as _,
                    libc::MSG_DONTWAIT as _,
                    ptr::null_mut(),
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let n = n as usize;
            for (i, hdr) in hdrs[..n].iter().enumerate() {
                self.lens[i] = (hdr.msg_len as usize).min(UDP_RECV_BUFFER);
                self.addr_lens[i] = hdr.msg_hdr.msg_namelen;
            }
            self.received = n;
            Ok(n)
        }

        /// Answers every received datagram; queues the answers for [`Batch::send`].
        pub fn answer(&mut self, handler: &Handler) {
            for i in 0..self.received {
                let Some(src) = socket_addr(&self.addrs[i], self.addr_lens[i]) else {
                    continue; // not an IP peer: nothing to answer
                };
                if src.port() == 0 {
                    continue; // cannot be answered; never reflect to port 0
                }
                let packet = &self.bufs[i * UDP_RECV_BUFFER..][..self.lens[i]];
                if handler.handle(packet, src, Transport::Udp, &mut self.outs[i]) {
                    self.pending.push((i, src));
                }
            }
        }

        /// Answers queued by the last [`Batch::answer`].
        pub fn pending(&self) -> usize {
            self.pending.len()
        }

        /// Destination of queued answer `k`.
        pub fn destination(&self, k: usize) -> SocketAddr {
            self.pending[k].1
        }

        /// One non-blocking `sendmmsg` of the queued answers from `from` on; returns how many
        /// the kernel took (at least one: it fails only if the first one fails).
        pub fn send(&self, fd: RawFd, from: usize) -> io::Result<usize> {
            // At most BATCH: `pending` holds at most one entry per received datagram.
            let todo = &self.pending[from..self.pending.len().min(from + BATCH)];
            let mut iovs = [MaybeUninit::<libc::iovec>::uninit(); BATCH];
            // SAFETY: as in `recv`, all-zero bytes are a valid mmsghdr.
            let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
            let outs = &self.outs;
            let addrs = &self.addrs;
            for ((&(i, _), iov), hdr) in todo.iter().zip(&mut iovs).zip(&mut hdrs) {
                let out = &outs[i];
                let iov = iov.write(libc::iovec {
                    iov_base: out.as_ptr().cast_mut().cast(),
                    iov_len: out.len(),
                });
                hdr.msg_hdr.msg_iov = iov;
                hdr.msg_hdr.msg_iovlen = 1;
                hdr.msg_hdr.msg_name = ptr::from_ref(&addrs[i]).cast_mut().cast();
                hdr.msg_hdr.msg_namelen = self.addr_lens[i];
            }
            // SAFETY: the first `todo.len()` (<= BATCH) headers each name one initialised iovec
            // covering an answer in `self.outs` and the source address `recvmmsg` stored with its
            // length. sendmmsg only reads through these pointers (the `cast_mut`s are for the C
            // types), and the buffers are borrowed for this whole function, so they outlive the
            // call unchanged. The kernel writes only the headers' `msg_len`, on this stack.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    hdrs.as_mut_ptr(),
                    todo.len() as _,
                    libc::MSG_DONTWAIT as _,
                )
            };
            match n {
                n if n < 0 => Err(io::Error::last_os_error()),
                // Cannot happen for a non-empty batch; an error keeps the caller's loop moving.
                0 => Err(io::ErrorKind::WriteZero.into()),
                n => Ok(n as usize),
            }
        }
    }

    /// The peer address `recvmmsg` stored, if it is IPv4 or IPv6.
    fn socket_addr(addr: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
        let len = len as usize;
        match i32::from(addr.ss_family) {
            libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
                // SAFETY: the family is AF_INET and the kernel wrote a whole sockaddr_in;
                // sockaddr_storage is at least as large and as aligned as any sockaddr type.
                let a = unsafe { &*ptr::from_ref(addr).cast::<libc::sockaddr_in>() };
                Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                    u16::from_be(a.sin_port),
                )))
            }
            libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
                // SAFETY: as above, for AF_INET6 and sockaddr_in6.
                let a = unsafe { &*ptr::from_ref(addr).cast::<libc::sockaddr_in6>() };
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(a.sin6_addr.s6_addr),
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }

    #[cfg(test)]
    mod tests {
        use std::net::UdpSocket;
        use std::os::fd::AsRawFd;

        use super::*;

        /// Sends `count` datagrams of distinct sizes from two clients to a fresh server socket,
        /// drains them in batches and echoes each back reversed with `send`.
        fn round_trip(server_addr: &str, count: usize) {
            let Ok(server) = UdpSocket::bind(server_addr) else {
                return; // e.g. no IPv6 loopback in this sandbox
            };
            server.set_nonblocking(true).unwrap();
            let to = server.local_addr().unwrap();
            let any = SocketAddr::new(to.ip(), 0);
            let clients = [UdpSocket::bind(any).unwrap(), UdpSocket::bind(any).unwrap()];
            let mut sent = Vec::new();
            for k in 0..count {
                let c = &clients[k % 2];
                let msg: Vec<u8> = (0..k + 1).map(|b| (b * 7 + k) as u8).collect();
                c.send_to(&msg, to).unwrap();
                sent.push((c.local_addr().unwrap(), msg));
            }

            let mut batch = Batch::new();
            let fd = server.as_raw_fd();
            let mut got = Vec::new();
            // Loopback delivers synchronously: every datagram is queued already.
            loop {
                batch.clear();
                match batch.recv(fd) {
                    Ok(n) => assert!(n <= BATCH),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("recvmmsg: {e}"),
                }
                for i in 0..batch.received {
                    let src = socket_addr(&batch.addrs[i], batch.addr_lens[i]).unwrap();
                    let packet = &batch.bufs[i * UDP_RECV_BUFFER..][..batch.lens[i]];
                    got.push((src, packet.to_vec()));
                    batch.outs[i].clear();
                    batch.outs[i].extend(packet.iter().rev());
                    batch.pending.push((i, src));
                }
                let mut done = 0;
                while done < batch.pending() {
                    done += batch.send(fd, done).unwrap();
                }
            }
            assert_eq!(
                got, sent,
                "every datagram, whole, in order, with its source"
            );

            for c in &clients {
                c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                    .unwrap();
            }
            let mut buf = [0u8; 256];
            for (k, (_, msg)) in sent.iter().enumerate() {
                let (n, from) = clients[k % 2].recv_from(&mut buf).unwrap();
                assert_eq!(from, to);
                let want: Vec<u8> = msg.iter().rev().copied().collect();
                assert_eq!(&buf[..n], &want[..], "answer {k}");
            }
        }

        #[test]
        fn batches_ipv4_and_ipv6_round_trip() {
            round_trip("127.0.0.1:0", 3 * BATCH + 5);
            round_trip("[::1]:0", 2 * BATCH + 1);
        }

        #[test]
        fn a_largest_datagram_is_received_whole() {
            let server = UdpSocket::bind("127.0.0.1:0").unwrap();
            let client = UdpSocket::bind("127.0.0.1:0").unwrap();
            let big = vec![0xa5u8; 65_507]; // the largest UDP payload over IPv4
            client.send_to(&big, server.local_addr().unwrap()).unwrap();
            client
                .send_to(b"small", server.local_addr().unwrap())
                .unwrap();
            let mut batch = Batch::new();
            assert_eq!(batch.recv(server.as_raw_fd()).unwrap(), 2);
            assert_eq!(batch.lens[..2], [big.len(), 5]);
            assert!(batch.bufs[..big.len()].iter().all(|&b| b == 0xa5));
            assert_eq!(&batch.bufs[UDP_RECV_BUFFER..][..5], b"small");
        }
    }
}

async fn serve_tcp(
    listener: TcpListener,
    handler: Arc<Handler>,
    limits: TcpLimits,
    table: Arc<ConnTable>,
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
        let slot = match table.admit(src.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                debug!(%src, ?why, "no tcp slot for this connection; closing");
                drop(stream);
                continue;
            }
        };
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            if let Err(e) = serve_conn(stream, src, &handler, limits, &slot, &shutdown).await {
                debug!(%src, error = %e, "tcp connection ended");
            }
        });
    }
}

/// Answers are handed to the kernel once this many bytes are waiting, even while pipelined
/// queries are still buffered: bounds a connection's memory (plus one answer).
const TCP_FLUSH_AT: usize = 16 << 10;

/// One TCP connection: length-prefixed messages (RFC 1035 §4.2.2), answered in order.
///
/// Reads wait at most `idle_timeout`; handing answers to the kernel waits at most
/// `write_timeout` (it only waits when the client has stopped reading and the socket buffers
/// are full). A connection whose slot is given to another ([`ConnTable`]) closes at once.
async fn serve_conn(
    stream: TcpStream,
    src: SocketAddr,
    handler: &Handler,
    limits: TcpLimits,
    slot: &ConnSlot,
    shutdown: &CancellationToken,
) -> io::Result<()> {
    let idle = limits.idle_timeout;
    let evicted = slot.evicted();
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut msg = Vec::with_capacity(512);
    let mut out = Vec::with_capacity(4096);
    // Answers not yet handed to the kernel (length-prefixed).
    let mut pending = Vec::with_capacity(4096);
    loop {
        // Write only when no pipelined query is waiting, so a burst is answered in one write.
        if !pending.is_empty() && (r.buffer().is_empty() || pending.len() >= TCP_FLUSH_AT) {
            // Not cut short by shutdown: answers already computed are delivered (bounded by
            // the write timeout). Eviction does cut it: a write still pending after
            // MIN_QUIET is a client that stopped reading.
            let done = tokio::select! {
                biased;
                _ = evicted.cancelled() => None,
                r = tokio::time::timeout(limits.write_timeout, w.write_all(&pending)) => Some(r),
            };
            match done {
                Some(Ok(Ok(()))) => {
                    pending.clear();
                    slot.progress();
                }
                Some(Ok(Err(e))) => return Err(e),
                None | Some(Err(_)) => {
                    // Reset rather than close: a graceful close would keep the unread answers
                    // (up to megabytes of kernel buffer) queued for a client that never reads.
                    let _ = socket2::SockRef::from(w.as_ref()).set_linger(Some(Duration::ZERO));
                    debug!(%src, evicted = done.is_none(), "tcp client not reading; reset");
                    return Ok(());
                }
            }
        }
        let len = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            _ = evicted.cancelled() => return Ok(()),
            r = tokio::time::timeout(idle, r.read_u16()) => match r {
                Ok(Ok(n)) => usize::from(n),
                Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(()), // idle
            },
        };
        msg.resize(len, 0);
        let read = tokio::select! {
            biased;
            _ = evicted.cancelled() => return Ok(()),
            r = tokio::time::timeout(idle, r.read_exact(&mut msg)) => r,
        };
        match read {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()), // a client trickling bytes is treated as idle
        }
        slot.progress();
        if handler.handle(&msg, src, Transport::Tcp, &mut out) {
            pending.extend_from_slice(&(out.len() as u16).to_be_bytes());
            pending.extend_from_slice(&out);
        }
    }
}
