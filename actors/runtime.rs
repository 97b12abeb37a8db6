//! The async runtime, decided in this one file: smol's executor and reactor.
//!
//! A node owns its executor and the threads that run it, so several nodes can live in
//! one process (tests, embedders) and shutting a node down stops exactly its tasks.
//! Everything else in `actors/` spawns, sleeps and opens sockets through this module.

use std::future::Future;
use std::io;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_executor::Executor;

pub use async_executor::Task;
pub use async_io::Async;
pub use async_net::{TcpListener, TcpStream, UdpSocket};

/// Runs a future to completion on the calling thread, driving I/O meanwhile.
pub fn block_on<T>(future: impl Future<Output = T>) -> T {
    async_io::block_on(future)
}

/// A handle that spawns tasks on a node's executor.
///
/// It holds the executor weakly: tasks keep spawners (through the node's context),
/// and a strong reference would keep a stopped node's executor, and so its tasks,
/// alive forever.
#[derive(Clone)]
pub struct Spawner {
    executor: Weak<Executor<'static>>,
}

impl Spawner {
    /// Spawns `future`; `None` once the node's runtime has stopped.
    pub fn spawn<F>(&self, future: F) -> Option<Task<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.executor.upgrade().map(|ex| ex.spawn(future))
    }

    /// Spawns a task nobody waits for.
    pub fn spawn_detached<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if let Some(task) = self.spawn(future) {
            task.detach();
        }
    }
}

/// The executor threads of one node.
pub struct Runtime {
    executor: Arc<Executor<'static>>,
    spawner: Spawner,
    stop: async_channel::Sender<()>,
    threads: Vec<JoinHandle<()>>,
}

impl Runtime {
    /// Starts `threads` executor threads (at least one) named after the node.
    pub fn start(threads: usize, name: &str) -> io::Result<Runtime> {
        let executor = Arc::new(Executor::new());
        let (stop, stopped) = async_channel::bounded::<()>(1);
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let executor = executor.clone();
            let stopped = stopped.clone();
            let handle = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    // Closing the channel ends every thread's `run`.
                    let _ = async_io::block_on(executor.run(stopped.recv()));
                })?;
            handles.push(handle);
        }
        Ok(Runtime {
            spawner: Spawner {
                executor: Arc::downgrade(&executor),
            },
            executor,
            stop,
            threads: handles,
        })
    }

    pub fn spawner(&self) -> Spawner {
        self.spawner.clone()
    }

    /// Stops the executor threads; tasks still pending are dropped with the executor.
    pub fn stop(mut self) {
        self.stop.close();
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
        drop(self.executor);
    }
}

/// Executor threads for a node: `configured`, or with 0 one per core less one (at
/// least one). The spare core keeps the kernel's network work and the clients on
/// the same host from preempting the executor; on two cores one thread also avoids
/// cross-thread wake-ups on the request/reply path (measured: p50 64 µs with one
/// thread, 89 µs with two, same throughput but for 1:4 fan-out).
pub fn threads_for(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    std::thread::available_parallelism()
        .map(|n| n.get().saturating_sub(1))
        .unwrap_or(1)
        .max(1)
}

/// A TCP listener on `addr` whose accept queue is as long as the kernel allows
/// (`net.core.somaxconn`, as the reference listens), not the standard library's 128:
/// with 128, a reconnect storm of thousands overflows the queue and the SYNs that
/// did not fit are retried by the clients' kernels only after 1 s and 3 s.
pub fn listen(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    listen_on(addr, None)
}

/// [`listen`], taking connections only from packets that arrive on `device` (Linux's
/// `SO_BINDTODEVICE`): the kernel accepts a packet for a local address on any
/// interface, so binding to the mesh address alone would let an underlay host that
/// routes to it connect.
pub fn listen_on(addr: std::net::SocketAddr, device: Option<&str>) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As std does on Unix: a restarted node can bind while old connections linger.
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    if let Some(device) = device {
        socket.bind_device(Some(device.as_bytes()))?;
    }
    socket.bind(&addr.into())?;
    socket.listen(accept_backlog())?;
    TcpListener::try_from(std::net::TcpListener::from(socket))
}

/// A UDP socket on `port` of every address of both families (`[::]`, IPv4 as mapped
/// addresses), or of every IPv4 address where the host has no IPv6. Its port can be
/// shared with a socket bound to one address ([`udp_on_device`]), which then takes
/// that address's datagrams.
pub fn udp_any_family(port: u16) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let v6 = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).and_then(|socket| {
        socket.set_only_v6(false)?;
        socket.set_reuse_address(true)?;
        let any = std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
        socket.bind(&any.into())?;
        Ok(socket)
    });
    match v6 {
        Ok(socket) => Ok(socket.into()),
        Err(_) => {
            let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
            socket.set_reuse_address(true)?;
            let any = std::net::SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port));
            socket.bind(&any.into())?;
            Ok(socket.into())
        }
    }
}

/// A UDP socket on `addr` that takes only datagrams arriving on `device`
/// (`SO_BINDTODEVICE`; the kernel gives a datagram to the most specific socket on
/// its port): on a WireGuard interface, every datagram it takes was sent by the key
/// holder of the peer whose address is its source.
pub fn udp_on_device(addr: std::net::SocketAddr, device: &str) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.bind_device(Some(device.as_bytes()))?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A UDP socket that hears what the network says about the datagrams it sends: the
/// kernel queues the ICMP errors they draw (`IP_RECVERR`), and [`refused`] yields the
/// destinations they name. A host whose process died answers a datagram to its closed
/// port with "port unreachable" at once, which is how the mesh tells a killed node from
/// a silent one well before the silence says so.
///
/// [`refused`]: ErrorReportingUdp::refused
pub struct ErrorReportingUdp(Async<std::net::UdpSocket>);

impl ErrorReportingUdp {
    /// Bound to an ephemeral port on every address (it only sends).
    pub fn bind() -> io::Result<ErrorReportingUdp> {
        use std::os::fd::AsRawFd;
        let socket = std::net::UdpSocket::bind(("0.0.0.0", 0))?;
        let on: libc::c_int = 1;
        // SAFETY: setsockopt(2) on a socket this function owns, with a pointer to a
        // c_int and its size, as IP_RECVERR takes.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_RECVERR,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ErrorReportingUdp(Async::new(socket)?))
    }

    /// Sends one datagram. An error the kernel holds for an earlier datagram (to
    /// another destination, perhaps) fails the next send, so a failed send is tried
    /// once more.
    pub async fn send_to(&self, datagram: &[u8], to: std::net::SocketAddr) -> io::Result<usize> {
        match self.0.send_to(datagram, to).await {
            Ok(n) => Ok(n),
            Err(_) => self.0.send_to(datagram, to).await,
        }
    }

    /// Waits until the network refuses datagrams this socket sent ("port
    /// unreachable" from the destination's host), and returns their destinations
    /// (each as often as it was refused). Other errors are dropped: a "host
    /// unreachable" our own kernel makes up when the neighbour does not answer ARP (a
    /// cut link, a partition) says nothing of the node's process.
    pub async fn refused(&self) -> Vec<std::net::SocketAddr> {
        use std::os::fd::AsRawFd;
        let drained = self
            .0
            .read_with(|socket| {
                // The pending error keeps the socket readable until it is taken.
                let _ = socket2::SockRef::from(socket).take_error();
                let mut refused = Vec::new();
                while let Some(error) = next_queued_error(socket.as_raw_fd()) {
                    if let (Some(to), Some(libc::ECONNREFUSED)) = error {
                        refused.push(to);
                    }
                }
                if refused.is_empty() {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(refused)
                }
            })
            .await;
        drained.unwrap_or_default()
    }
}

/// Takes one error off an `IP_RECVERR` socket's queue: the destination of the
/// datagram it is about (IPv4) and its errno; `None` when the queue is empty.
fn next_queued_error(fd: i32) -> Option<(Option<std::net::SocketAddr>, Option<i32>)> {
    // SAFETY: every pointer in `msg` points at a local buffer of the length given with
    // it, which outlives the call; recvmsg(2) writes at most those lengths.
    let mut name: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut control = [0u64; 64];
    let mut byte = 0u8;
    let mut iov = libc::iovec {
        iov_base: (&mut byte as *mut u8).cast(),
        iov_len: 1,
    };
    // SAFETY: msghdr is plain data; zero is a valid value for every field.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut name as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: see above; MSG_ERRQUEUE never blocks.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
    if n < 0 {
        return None;
    }
    let to = (i32::from(name.sin_family) == libc::AF_INET).then(|| {
        std::net::SocketAddr::from((
            std::net::Ipv4Addr::from(u32::from_be(name.sin_addr.s_addr)),
            u16::from_be(name.sin_port),
        ))
    });
    let mut errno = None;
    // SAFETY: the CMSG_* macros walk the control buffer recvmsg filled, within the
    // length it set; an IP_RECVERR message carries a sock_extended_err first.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_IP && (*cmsg).cmsg_type == libc::IP_RECVERR {
                let ee = libc::CMSG_DATA(cmsg).cast::<libc::sock_extended_err>();
                errno = Some(std::ptr::read_unaligned(ee).ee_errno as i32);
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Some((to, errno))
}

/// A listener's tie to a network device (`SO_BINDTODEVICE`), to be made again: the
/// kernel keeps the device's index, so once the device is deleted and created again
/// under the same name (wireguard-go restarted) the listener takes nothing until the
/// option is set anew. Holds a duplicate of the listener's descriptor.
pub struct DeviceBinding(socket2::Socket);

impl DeviceBinding {
    /// The tie of `socket` (a listener, or a [`udp_on_device`] socket).
    pub fn of(socket: &impl std::os::fd::AsFd) -> io::Result<DeviceBinding> {
        let fd = socket.as_fd().try_clone_to_owned()?;
        Ok(DeviceBinding(socket2::Socket::from(fd)))
    }

    /// Ties the listener to the device now called `device`.
    pub fn rebind(&self, device: &str) -> io::Result<()> {
        self.0.bind_device(Some(device.as_bytes()))
    }
}

/// Makes the last close of `stream` reset the connection (`SO_LINGER` 0: one RST,
/// unsent data dropped) instead of closing it.
pub fn reset_on_close(stream: &TcpStream) -> io::Result<()> {
    socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO))
}

/// The longest accept queue the kernel grants (`listen` caps at it anyway).
fn accept_backlog() -> i32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(4096)
}

/// A byte stream of this runtime as hyper's I/O (for the monitoring endpoint).
pub fn hyper_io<T>(io: T) -> smol_hyper::rt::FuturesIo<T> {
    smol_hyper::rt::FuturesIo::new(io)
}

/// Reads a whole file: configs, certificates, secrets (small, read at start and on
/// reload; `src/` takes this as its way to read files).
pub fn read_file(path: &std::path::Path) -> io::Result<Vec<u8>> {
    std::fs::read(path)
}

/// The `*.jwt` files of a directory, as (file name, trimmed text), sorted by name;
/// the directory is created (mode 0700) when missing. Unreadable files are skipped
/// with a warning: the full resolver's directory is read at start and on reload.
pub fn read_jwt_dir(dir: &std::path::Path) -> io::Result<Vec<(String, String)>> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !name.ends_with(".jwt") {
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(text) => out.push((name.to_string(), text.trim().to_string())),
            Err(e) => log::warn!("{}: {e}", path.display()),
        }
    }
    out.sort();
    Ok(out)
}

/// Replaces `dir/name` with `text` durably: written to a temporary file (mode 0600),
/// fsynced, renamed over the old one, the directory fsynced; a crash leaves the old
/// file or the new one, never a mix.
pub fn write_file_durably(dir: &std::path::Path, name: &str, text: &str) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

/// The wall clock (for times shown to people and written into records).
pub fn wall_clock() -> std::time::SystemTime {
    std::time::SystemTime::now()
}

/// Runs `work` on a thread of its own (for blocking reads that last as long as what
/// they read: a child process's output).
pub fn spawn_thread(name: &str, work: impl FnOnce() + Send + 'static) -> io::Result<()> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(work)
        .map(|_| ())
}

/// The process signals the binary acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessSignal {
    Interrupt,
    Terminate,
    Hangup,
}

/// The process's SIGINT, SIGTERM and SIGHUP, taken over from their default action.
pub struct ProcessSignals(async_signal::Signals);

impl ProcessSignals {
    pub fn new() -> io::Result<ProcessSignals> {
        use async_signal::{Signal, Signals};
        Signals::new([Signal::Int, Signal::Term, Signal::Hup]).map(ProcessSignals)
    }

    /// Blocks until the next signal (`None` if they can no longer be read).
    pub fn wait(&mut self) -> Option<ProcessSignal> {
        use futures_lite::StreamExt;
        match block_on(self.0.next())? {
            Ok(async_signal::Signal::Hup) => Some(ProcessSignal::Hangup),
            Ok(async_signal::Signal::Term) => Some(ProcessSignal::Terminate),
            Ok(_) => Some(ProcessSignal::Interrupt),
            Err(_) => None,
        }
    }
}

pub fn now() -> Instant {
    Instant::now()
}

/// `t` in nanoseconds since the Unix epoch (0 before it), the wall-clock form that
/// `src/` takes as input.
pub fn unix_ns(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos().min(i64::MAX as u128) as i64)
}

/// Now, in nanoseconds since the Unix epoch.
pub fn now_unix_ns() -> i64 {
    unix_ns(std::time::SystemTime::now())
}

/// Sleeps until `at`.
pub async fn sleep_until(at: Instant) {
    async_io::Timer::at(at).await;
}

/// Runs blocking work (a bcrypt check, a system call that may wait) on the blocking
/// thread pool, off the executor threads.
pub async fn unblock<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    blocking::unblock(work).await
}

pub async fn sleep(d: Duration) {
    async_io::Timer::after(d).await;
}

/// A timer that fires every `period`, starting one period from now.
pub fn interval(period: Duration) -> async_io::Timer {
    async_io::Timer::interval(period)
}

/// Runs `future` for at most `limit`; `None` when the limit came first.
pub async fn timeout<T>(limit: Duration, future: impl Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(future.await) }, async {
        sleep(limit).await;
        None
    })
    .await
}

/// This process's resident memory (bytes) and CPU time used so far (seconds), from
/// `/proc` (zeros where it cannot be read).
pub fn process_usage() -> (u64, f64) {
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024);
    // Fields 14 and 15 of /proc/self/stat (after the parenthesised command name):
    // user and system time in clock ticks (100 per second on Linux).
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0);
    (rss, cpu)
}
