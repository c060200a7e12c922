//! A response body written by a blocking task, chunk by chunk, that ends
//! cleanly only when the writer says it is complete.
//!
//! The tracing queries stream their answers this way (`visits`). A short
//! answer must never look like a whole one, so the end of the body is a
//! message of its own, sent by [`StreamWriter::finish`] after the last
//! chunk, through the same channel as the chunks: the body sees it only
//! after every chunk before it. If the writer goes away without finishing
//! (it failed, or its task panicked), the body ends with an error, and
//! hyper closes the connection without the last chunk of the chunked
//! encoding: the client sees a broken answer, not a short one.
//!
//! http-body-util's channel body is not used for this. It carries the
//! chunks and the end on two channels and, when it finds no chunk, looks at
//! the second one: a writer that sends its last chunk and goes away in
//! between makes it end the body there, with that chunk still queued. A
//! one-chunk answer then arrives as a complete, empty answer (200, no
//! lines). Rare on an idle machine, frequent on a loaded one, where the
//! connection's thread is preempted between the two looks.

use bytes::Bytes;
use hyper::body::{Body, Frame};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

enum Message {
    Chunk(Bytes),
    End,
    Fail(std::io::Error),
}

/// The writing half, for a blocking thread (it must not be used from an
/// async task: sending blocks while the body's buffer is full).
pub struct StreamWriter {
    tx: mpsc::Sender<Message>,
}

/// The body half, for the response.
pub struct StreamBody {
    rx: mpsc::Receiver<Message>,
    done: bool,
}

/// The reader of the body is gone (the client closed the connection): the
/// rest of the answer has nowhere to go.
#[derive(Debug)]
pub struct Gone;

/// A body and its writer; at most `buffer` chunks wait between them.
pub fn stream(buffer: usize) -> (StreamWriter, StreamBody) {
    let (tx, rx) = mpsc::channel(buffer);
    (StreamWriter { tx }, StreamBody { rx, done: false })
}

impl StreamWriter {
    /// Sends a chunk, waiting while the buffer is full.
    pub fn send(&mut self, chunk: Bytes) -> Result<(), Gone> {
        self.tx.blocking_send(Message::Chunk(chunk)).map_err(|_| Gone)
    }

    /// Ends the body cleanly after the chunks sent so far.
    pub fn finish(self) -> Result<(), Gone> {
        self.tx.blocking_send(Message::End).map_err(|_| Gone)
    }

    /// Ends the body with an error after the chunks sent so far.
    pub fn fail(self, error: std::io::Error) {
        // Nobody left to tell if this fails.
        let _ = self.tx.blocking_send(Message::Fail(error));
    }
}

impl Body for StreamBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        // One channel: a message is seen only after every message sent
        // before it, and `None` only once all of them have been received.
        let next = match std::task::ready!(self.rx.poll_recv(cx)) {
            Some(Message::Chunk(chunk)) => return Poll::Ready(Some(Ok(Frame::data(chunk)))),
            Some(Message::End) => None,
            Some(Message::Fail(e)) => Some(Err(e)),
            None => Some(Err(std::io::Error::other("the answer's writer stopped before the answer was complete"))),
        };
        self.done = true;
        Poll::Ready(next)
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::task::{RawWaker, RawWakerVTable, Waker};

    /// What a test runs from inside a poll of the body.
    type Action = Box<dyn FnOnce() + Send>;

    /// A waker that runs an action when it is cloned for the `at`-th time.
    /// A body that registers for a wake-up clones the waker; running the
    /// writer there puts its last steps exactly between the body's looks at
    /// its channels, where a thread switch would put them.
    struct Hook {
        clones: Mutex<(usize, usize, Option<Action>)>,
    }

    fn hook_waker(hook: Arc<Hook>) -> Waker {
        fn clone(p: *const ()) -> RawWaker {
            // SAFETY: `p` came from `Arc::into_raw` below and is alive (the
            // waker holds one count); this adds a count for the new waker.
            let hook = unsafe {
                Arc::increment_strong_count(p as *const Hook);
                &*(p as *const Hook)
            };
            let action = {
                let mut c = hook.clones.lock().unwrap();
                c.0 += 1;
                if c.0 == c.1 {
                    c.2.take()
                } else {
                    None
                }
            };
            if let Some(action) = action {
                action();
            }
            RawWaker::new(p, &VTABLE)
        }
        fn wake(p: *const ()) {
            drop_waker(p);
        }
        fn wake_by_ref(_: *const ()) {}
        fn drop_waker(p: *const ()) {
            // SAFETY: each waker owns one count, given back here once.
            unsafe { Arc::decrement_strong_count(p as *const Hook) };
        }
        static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, wake, wake_by_ref, drop_waker);
        // SAFETY: the vtable keeps the reference count as described above.
        unsafe { Waker::from_raw(RawWaker::new(Arc::into_raw(hook) as *const (), &VTABLE)) }
    }

    /// Polls `body` to its end with a waker that runs `action` at its
    /// `at`-th clone (or after the first pending poll if no clone came);
    /// the bytes and how the body ended.
    fn drive<B>(mut body: B, at: usize, action: Action) -> (Vec<u8>, Result<(), String>)
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let hook = Arc::new(Hook { clones: Mutex::new((0, at, Some(action))) });
        let waker = hook_waker(hook.clone());
        let mut cx = Context::from_waker(&waker);
        let mut out = Vec::new();
        for _ in 0..100 {
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(f))) => out.extend_from_slice(&f.into_data().unwrap_or_default()),
                Poll::Ready(Some(Err(e))) => return (out, Err(e.to_string())),
                Poll::Ready(None) => return (out, Ok(())),
                Poll::Pending => {
                    let late = hook.clones.lock().unwrap().2.take();
                    match late {
                        Some(action) => action(),
                        None => panic!("pending with nothing left to send"),
                    }
                }
            }
        }
        panic!("the body never ended");
    }

    #[test]
    fn the_last_chunk_and_the_end_sent_during_a_poll_are_never_lost() {
        // Whichever point of the body's poll the writer's last steps land
        // on, the answer arrives whole and then ends cleanly.
        for at in 1..=4 {
            let (mut tx, body) = stream(8);
            let action: Action = Box::new(move || {
                tx.send(Bytes::from_static(b"{\"node\":\"b\"}\n")).unwrap();
                tx.finish().unwrap();
            });
            let (bytes, end) = drive(body, at, action);
            assert_eq!((bytes.as_slice(), end), (&b"{\"node\":\"b\"}\n"[..], Ok(())), "writer ran at clone {at}");
        }
    }

    #[test]
    fn a_writer_gone_without_finishing_breaks_the_body() {
        // A panic in the writer's task drops it without `finish`.
        for at in 1..=3 {
            let (mut tx, body) = stream(8);
            let action: Action = Box::new(move || {
                tx.send(Bytes::from_static(b"part\n")).unwrap();
                drop(tx);
            });
            let (bytes, end) = drive(body, at, action);
            assert_eq!(bytes, b"part\n");
            assert!(end.is_err(), "writer ran at clone {at}: a short body ended cleanly");
        }
    }

    #[test]
    fn a_failure_breaks_the_body_after_what_was_sent() {
        let (mut tx, body) = stream(8);
        let action: Action = Box::new(move || {
            tx.send(Bytes::from_static(b"part\n")).unwrap();
            tx.fail(std::io::Error::other("index failed"));
        });
        let (bytes, end) = drive(body, 1, action);
        assert_eq!((bytes.as_slice(), end), (&b"part\n"[..], Err("index failed".to_owned())));
    }

    #[test]
    fn sending_to_a_body_that_was_dropped_says_so() {
        let (mut tx, body) = stream(8);
        drop(body);
        assert!(tx.send(Bytes::from_static(b"x")).is_err());
        assert!(tx.finish().is_err());
    }
}
