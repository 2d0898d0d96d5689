//! [`AsyncChannel`]: the proto [`Channel`] on the broker's event loop. All
//! socket I/O still goes through `Channel`; this only waits for readiness.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use spacer_proto::internal::{self, Message, Trust};
use spacer_proto::{Channel, MessageError, Received, RecvError};
use tokio::io::unix::AsyncFd;

/// A non-blocking [`Channel`] registered with the runtime.
#[derive(Debug)]
pub struct AsyncChannel {
    inner: AsyncFd<Channel>,
}

impl AsyncChannel {
    /// Registers `chan` (switching it to non-blocking).
    pub fn new(chan: Channel) -> io::Result<AsyncChannel> {
        chan.set_nonblocking(true)?;
        Ok(AsyncChannel {
            inner: crate::sys::register_channel(chan)?,
        })
    }

    /// The underlying channel.
    pub fn get(&self) -> &Channel {
        self.inner.get_ref()
    }

    /// Receives one datagram; see [`Channel::recv`].
    pub async fn recv(
        &self,
        buf: &mut [u8],
        max_fds: usize,
    ) -> Result<Option<Received>, RecvError> {
        loop {
            let mut guard = self.inner.readable().await.map_err(RecvError::Io)?;
            match self.inner.get_ref().recv(buf, max_fds) {
                Err(e) if e.is_would_block() => guard.clear_ready(),
                other => return other,
            }
        }
    }

    /// Receives one internal message; see [`Channel::recv_msg`].
    pub async fn recv_msg<T: Message>(
        &self,
        buf: &mut [u8],
        trust: Trust,
    ) -> Result<Option<(T, Vec<OwnedFd>)>, MessageError> {
        loop {
            let mut guard = self
                .inner
                .readable()
                .await
                .map_err(|e| MessageError::Recv(RecvError::Io(e)))?;
            match self.inner.get_ref().recv_msg(buf, trust) {
                Err(e) if e.is_would_block() => guard.clear_ready(),
                other => return other,
            }
        }
    }

    /// Sends one internal message; see [`Channel::send_msg`].
    pub async fn send_msg<T: Message>(&self, msg: &T, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        self.send(&internal::encode(msg), fds).await
    }

    /// Sends one datagram; see [`Channel::send`].
    pub async fn send(&self, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        loop {
            let mut guard = self.inner.writable().await?;
            match self.inner.get_ref().send(data, fds) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                other => return other,
            }
        }
    }

    /// Waits until a datagram (or end of stream) can be read, without
    /// reading it.
    pub async fn readable(&self) -> io::Result<()> {
        let mut guard = self.inner.readable().await?;
        guard.retain_ready();
        Ok(())
    }

    /// Whether the other end has closed.
    pub fn peer_closed(&self) -> bool {
        self.inner.get_ref().peer_closed()
    }
}

impl AsFd for AsyncChannel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.get_ref().as_fd()
    }
}
