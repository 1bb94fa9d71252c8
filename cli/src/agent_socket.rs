//! The agent socket with a cap on message size. ssh-agent-lib's framing reads a message's
//! `u32` length and buffers that many bytes with no limit of its own; OpenSSH's agent refuses
//! messages over 256 KiB (`AGENT_MAX_LEN`). [`Capped`] follows the framing as bytes arrive and
//! ends the connection with an error as soon as a length over the cap is read, before any of
//! the body is buffered.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};

/// Longest agent message accepted (OpenSSH's `AGENT_MAX_LEN`).
pub(crate) const MAX_MESSAGE: usize = 256 * 1024;

/// A listener whose connections are [`Capped`].
#[derive(Debug)]
pub(crate) struct CappedListener(pub(crate) UnixListener);

#[ssh_agent_lib::async_trait]
impl ssh_agent_lib::agent::ListeningSocket for CappedListener {
    type Stream = Capped;
    async fn accept(&mut self) -> io::Result<Capped> {
        // ssh-agent-lib stops listening on the first accept error: ride out the transient
        // ones (out of file descriptors, a connection aborted before it was accepted).
        loop {
            match self.0.accept().await {
                Ok((s, _)) => return Ok(Capped::new(s)),
                Err(e) if transient(&e) => {
                    tracing::warn!(error = %e, "agent: cannot accept a connection now; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
    ) || {
        use rustix::io::Errno;
        rustix::io::Errno::from_io_error(e)
            .is_some_and(|n| [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM].contains(&n))
    }
}

/// A connection that fails its read as soon as a message declares more than
/// [`MAX_MESSAGE`] bytes.
#[derive(Debug)]
pub(crate) struct Capped {
    inner: UnixStream,
    /// The length prefix read so far, and how many of its 4 bytes.
    header: [u8; 4],
    have: usize,
    /// Bytes of the current message's body still to come.
    left: usize,
}

impl Capped {
    pub(crate) fn new(inner: UnixStream) -> Self {
        Self {
            inner,
            header: [0; 4],
            have: 0,
            left: 0,
        }
    }

    /// The connecting process's credentials (SO_PEERCRED).
    pub(crate) fn peer_cred(&self) -> io::Result<tokio::net::unix::UCred> {
        self.inner.peer_cred()
    }

    /// Follows the framing over `bytes` (just read); an error for a length over the cap.
    fn track(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut rest = bytes;
        while !rest.is_empty() {
            if self.left > 0 {
                let k = self.left.min(rest.len());
                self.left -= k;
                rest = rest.get(k..).unwrap_or_default();
                continue;
            }
            let Some((&b, tail)) = rest.split_first() else {
                break;
            };
            rest = tail;
            if let Some(h) = self.header.get_mut(self.have) {
                *h = b;
            }
            self.have += 1;
            if self.have == 4 {
                self.have = 0;
                let len = u32::from_be_bytes(self.header) as usize;
                if len > MAX_MESSAGE {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("agent message of {len} bytes (at most {MAX_MESSAGE})"),
                    ));
                }
                self.left = len;
            }
        }
        Ok(())
    }
}

impl AsyncRead for Capped {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        Poll::Ready(this.track(buf.filled().get(before..).unwrap_or_default()))
    }
}

impl AsyncWrite for Capped {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_message_over_256_kib_ends_the_connection_before_its_body_is_read() {
        let (mut client, server) = UnixStream::pair().unwrap();
        let mut capped = Capped::new(server);
        // One message of exactly the cap passes (its body split across reads), then the
        // next declares one byte more.
        let body = vec![0x42u8; MAX_MESSAGE];
        let writer = tokio::spawn(async move {
            client
                .write_all(&(MAX_MESSAGE as u32).to_be_bytes())
                .await
                .unwrap();
            client.write_all(&body).await.unwrap();
            client
                .write_all(&(MAX_MESSAGE as u32 + 1).to_be_bytes())
                .await
                .unwrap();
            client
        });
        let mut got = vec![0u8; 4 + MAX_MESSAGE];
        capped.read_exact(&mut got).await.unwrap();
        let mut next = [0u8; 4];
        let e = capped.read_exact(&mut next).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        assert!(e.to_string().contains("at most 262144"), "{e}");
        drop(writer.await.unwrap());
    }

    #[test]
    fn the_framing_is_followed_byte_by_byte() {
        let (_a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let mut c = Capped::new(UnixStream::from_std(b).unwrap());
        // Two small messages fed one byte at a time, then a header split over two reads.
        let mut bytes = vec![];
        for m in [&b"\x0b"[..], &b"\x0dabc"[..]] {
            bytes.extend_from_slice(&(m.len() as u32).to_be_bytes());
            bytes.extend_from_slice(m);
        }
        for b in &bytes {
            c.track(std::slice::from_ref(b)).unwrap();
        }
        assert_eq!((c.have, c.left), (0, 0));
        c.track(&[0x00, 0x04]).unwrap();
        assert!(
            c.track(&[0x00, 0x01]).is_err(),
            "256 KiB + 1 split over reads"
        );
    }
}
