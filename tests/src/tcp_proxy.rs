//! A TCP proxy in the test process, to cut a component off the network: a listener on
//! a free port of 127.0.0.1 forwarding every connection to a target address.
//! [`TcpProxy::down`] closes every live connection and from then on closes each new
//! one as soon as it is accepted (the client reads end of stream: a network partition
//! as a client sees a server that went away); [`TcpProxy::up`] forwards again.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A forwarding listener (stopped on drop).
pub struct TcpProxy {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    up: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free port ([`crate::free_port`]) and forwards to `target`.
    ///
    /// # Panics
    ///
    /// When no port could be bound.
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let mut listener = None;
        for _ in 0..20 {
            if let Ok(l) = TcpListener::bind(("127.0.0.1", crate::free_port())).await {
                listener = Some(l);
                break;
            }
        }
        let listener = listener.expect("a port for the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (up, rx) = watch::channel(true);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if !*rx.borrow() {
                    drop(client);
                    continue;
                }
                let mut rx = rx.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = rx.wait_for(|up| !*up) => {}
                    }
                    // Both ends closed here, on drop.
                });
            }
        });
        TcpProxy { port, up, accept }
    }

    /// Closes every live connection and each new one.
    pub fn down(&self) {
        self.up.send_replace(false);
    }

    /// Forwards new connections again.
    pub fn up(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Live connections end with the sender.
        self.up.send_replace(false);
    }
}
