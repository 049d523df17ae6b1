//! Log output that never blocks a request: formatted lines go through a bounded queue to one
//! writer thread, which wakes every few milliseconds and writes everything queued to stderr in
//! one batch. With one `write(2)` per access-log line — or one thread wake-up per line —
//! logging cost as much as proxying; a request thread now only appends to a queue nobody is
//! blocked on (no system call). When the queue is full a line is dropped and counted
//! (`muster_router_log_lines_dropped_total`) rather than stalling traffic.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, Sender, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

enum Msg {
    Line(Vec<u8>),
    Flush(Sender<()>),
}

static DROPPED: AtomicU64 = AtomicU64::new(0);
static QUEUE: OnceLock<SyncSender<Msg>> = OnceLock::new();

/// Lines dropped because the writer fell behind.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// A `MakeWriter` feeding the background stderr writer.
#[derive(Clone)]
pub struct BackgroundStderr {
    _started: (),
}

impl BackgroundStderr {
    /// Starts the writer thread (once per process) with room for `capacity` queued lines.
    pub fn start(capacity: usize) -> Self {
        QUEUE.get_or_init(|| {
            let (tx, rx) = sync_channel(capacity);
            std::thread::Builder::new()
                .name("muster-log".into())
                .spawn(move || write_loop(rx))
                .expect("spawn log writer");
            tx
        });
        BackgroundStderr { _started: () }
    }
}

/// How long the writer sleeps between batches: the most a log line is delayed.
const BATCH_INTERVAL: Duration = Duration::from_millis(10);

fn write_loop(rx: Receiver<Msg>) {
    let stderr = std::io::stderr();
    let mut out = std::io::BufWriter::with_capacity(64 << 10, stderr.lock());
    loop {
        // Never block in `recv`: a blocked receiver makes every sender pay for a wake-up.
        loop {
            match rx.try_recv() {
                Ok(Msg::Line(line)) => {
                    let _ = out.write_all(&line);
                }
                Ok(Msg::Flush(ack)) => {
                    let _ = out.flush();
                    let _ = ack.send(());
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
        }
        let _ = out.flush();
        std::thread::sleep(BATCH_INTERVAL);
    }
}

/// Queues one finished line (with its newline) for the writer; dropped and counted when the
/// queue is full, ignored when the writer was never started (tests, no logging set up).
pub fn queue_line(line: Vec<u8>) {
    if let Some(q) = QUEUE.get() {
        if let Err(TrySendError::Full(_)) = q.try_send(Msg::Line(line)) {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Waits (up to `timeout`) until every line queued so far is written; call before exiting.
pub fn flush(timeout: Duration) {
    if let Some(q) = QUEUE.get() {
        let (tx, rx) = std::sync::mpsc::channel();
        if q.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(timeout);
        }
    }
}

/// One log event's bytes, queued when dropped.
pub struct QueuedLine {
    buf: Vec<u8>,
}

impl Write for QueuedLine {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for QueuedLine {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        queue_line(std::mem::take(&mut self.buf));
    }
}

impl<'a> MakeWriter<'a> for BackgroundStderr {
    type Writer = QueuedLine;

    fn make_writer(&'a self) -> QueuedLine {
        QueuedLine {
            buf: Vec::with_capacity(256),
        }
    }
}
