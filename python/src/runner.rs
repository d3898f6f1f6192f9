//! Running Rust work off the GIL: on mica's worker pool (large stacks, the thread count
//! of `CANDLE_NUM_THREADS`), while the calling thread waits without the GIL, hands the
//! job's progress events to Python and checks for signals (Ctrl-C) in between. A panic
//! in the job becomes an error, never a crash of the interpreter.

use crate::errors::{py_error, Kind};
use pyo3::prelude::*;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::OnceLock;
use std::time::Duration;

/// mica's worker pool, built on first use like the CLI's: candle's thread count, and
/// room for candle's recursive backward pass on deep graphs.
fn pool() -> Result<&'static rayon::ThreadPool, String> {
    static POOL: OnceLock<Result<rayon::ThreadPool, String>> = OnceLock::new();
    POOL.get_or_init(|| {
        let n = candle_core::utils::get_num_threads();
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("mica-py-{i}"))
            .stack_size(64 << 20)
            .build()
            .map_err(|e| format!("cannot start {n} worker threads: {e}"))
    })
    .as_ref()
    .map_err(|e| e.clone())
}

/// What the job can do while it runs: report an event (returns false once the caller
/// asked it to stop) and ask whether to stop.
pub struct Reporter<'a, E> {
    tx: std::sync::mpsc::Sender<E>,
    stop: &'a AtomicBool,
}

impl<E> Reporter<'_, E> {
    /// Sends `event` to the Python thread; false when the job should stop.
    pub fn report(&self, event: E) -> bool {
        let _ = self.tx.send(event);
        !self.stopped()
    }

    /// True once Ctrl-C was pressed or a Python callback failed.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// How a job ended, seen from Python.
pub struct Outcome<T> {
    /// The job's result (an error for a panic).
    pub result: Result<T, PyErr>,
    /// The exception that asked the job to stop (KeyboardInterrupt, or the callback's).
    pub interrupt: Option<PyErr>,
}

/// Runs `job` on the pool without the GIL; every event it reports is passed to
/// `on_event` on this thread (with the GIL). A signal or an exception from `on_event`
/// sets the stop flag that [`Reporter::report`] returns; the job then ends at its next
/// check and its result comes back with that exception.
pub fn run<T, E, J, F>(py: Python<'_>, job: J, mut on_event: F) -> Outcome<T>
where
    T: Send,
    E: Send,
    J: FnOnce(&Reporter<'_, E>) -> T + Send,
    F: FnMut(Python<'_>, E) -> PyResult<()>,
{
    let pool = match pool() {
        Ok(p) => p,
        Err(e) => {
            return Outcome {
                result: Err(py_error(Kind::Mica, e)),
                interrupt: None,
            }
        }
    };
    let stop = AtomicBool::new(false);
    let (tx, rx) = channel::<E>();
    let mut interrupt: Option<PyErr> = None;
    let joined = std::thread::scope(|s| {
        let stop = &stop;
        let handle = s.spawn(move || {
            let reporter = Reporter { tx, stop };
            pool.install(|| catch_unwind(AssertUnwindSafe(|| job(&reporter))))
        });
        let mut rx: Receiver<E> = rx;
        loop {
            let (back, got) = py.detach(move || {
                let got = rx.recv_timeout(Duration::from_millis(50));
                (rx, got)
            });
            rx = back;
            match got {
                Ok(event) => {
                    if interrupt.is_none() {
                        if let Err(e) = on_event(py, event) {
                            interrupt = Some(e);
                            stop.store(true, Ordering::SeqCst);
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if interrupt.is_none() {
                if let Err(e) = py.check_signals() {
                    interrupt = Some(e);
                    stop.store(true, Ordering::SeqCst);
                }
            }
        }
        py.detach(move || handle.join())
    });
    let result = match joined {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(panic)) | Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(py_error(
                Kind::Mica,
                format!("internal error in mica (please report it): {what}"),
            ))
        }
    };
    Outcome { result, interrupt }
}
