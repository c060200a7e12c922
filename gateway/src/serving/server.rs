//! Running the gateway: bind, load state, serve both listeners, drain.
//!
//! `main` parses arguments and configuration and calls [`run`] with bound
//! listeners and a shutdown future; tests call it the same way with port 0
//! and their own shutdown, in-process.

use crate::clock::Clock;
use crate::gateway::Gateway;
use crate::operations::config::{Config, ServerSettings};
use crate::operations::metrics::Listener;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Debug, Error)]
pub enum RunError {
    #[error("cannot bind {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("recovering state: {0}")]
    Recovery(#[from] crate::gateway::PersistError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("{0}")]
    Task(String),
    #[error("joining the cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
}

pub struct Listeners {
    pub public: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    pub async fn bind(s: &ServerSettings) -> Result<Listeners, RunError> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr).await.map_err(|source| RunError::Bind { addr, source })
        };
        Ok(Listeners { public: bind(s.public_addr).await?, admin: bind(s.admin_addr).await? })
    }

    pub fn addrs(&self) -> (SocketAddr, SocketAddr) {
        (
            self.public.local_addr().expect("bound socket has an address"),
            self.admin.local_addr().expect("bound socket has an address"),
        )
    }
}

/// Builds the gateway for `config` (state not yet loaded).
pub fn build(config: &Config, clock: Arc<dyn Clock>) -> Result<Arc<Gateway>, RunError> {
    let registry = prometheus::Registry::new();
    Ok(Arc::new(Gateway::new(config, clock, registry)?))
}

/// Serves until `shutdown` resolves. Listeners answer `/readyz` with 503
/// while the state file loads, then the gateway turns ready.
pub async fn run(
    gw: Arc<Gateway>,
    config: &Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    run_with(gw, config, listeners, shutdown, None).await
}

/// [`run`] with the log on the given storage (tests).
pub async fn run_with(
    gw: Arc<Gateway>,
    config: &Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
    storage: Option<Box<dyn crate::durability::wal::storage::Storage>>,
) -> Result<(), RunError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    // How late the runtime runs, for priority admission.
    let probe = {
        let gw = gw.clone();
        tokio::spawn(async move { gw.admission().probe().await })
    };
    // One rustls configuration, resolving the certificate the gateway holds
    // (swapped on reload), for the listeners `[tls]` names.
    let acceptor = gw.certificates().map(|c| tokio_rustls::TlsAcceptor::from(c.server_config()));
    let tls_on = |on: fn(&crate::operations::tls::TlsSettings) -> bool| {
        config.tls.as_ref().filter(|t| on(t)).and(acceptor.clone())
    };
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let public = tokio::spawn(crate::serving::http::serve(
        listeners.public,
        Listener::Public,
        gw.clone(),
        config.server.clone(),
        tls_on(|t| t.public),
        stopped(stop_rx.clone()),
    ));
    let admin =
        admin_thread(listeners.admin, gw.clone(), config.server.clone(), tls_on(|t| t.admin), stopped(stop_rx))?;

    let recovered = {
        let (gw2, config2) = (gw.clone(), config.clone());
        tokio::task::spawn_blocking(move || gw2.recover_with(&config2, storage))
            .await
            .map_err(|e| RunError::Task(e.to_string()))?
    };
    // A replica joins its cluster once its own state is back, and turns
    // ready only when it has read the streams up to where they ended.
    let recovered = match recovered {
        Ok(r) => match (&config.cluster, &config.log) {
            (Some(c), Some(l)) => {
                crate::cluster::Cluster::start(gw.clone(), c, &l.dir).await.map(|_| r).map_err(RunError::from)
            }
            _ => Ok(r),
        },
        Err(e) => Err(RunError::Recovery(e)),
    };
    let result = match recovered {
        Ok(r) => {
            tracing::info!(
                holders = r.holders,
                snapshot_lsn = r.snapshot_lsn,
                replayed = r.replayed,
                indexed = r.indexed,
                truncated_bytes = r.truncated_bytes,
                ms = r.elapsed.as_millis() as u64,
                "state recovered"
            );
            gw.set_loaded();
            tracing::info!("ready");
            let reloader = tokio::spawn(reload_on_sighup(gw.clone()));
            let background = config
                .log
                .as_ref()
                .map(|l| tokio::spawn(housekeeping(gw.clone(), l.snapshot_interval, l.purge_interval)));
            shutdown.await;
            reloader.abort();
            if let Some(b) = background {
                b.abort();
            }
            tracing::info!("shutting down: draining");
            Ok(())
        }
        Err(e) => Err(e),
    };
    gw.start_draining();
    let _ = stop_tx.send(true);
    let _ = public.await;
    let _ = tokio::task::spawn_blocking(move || admin.join()).await;
    probe.abort();
    // In-flight requests are answered; write a last snapshot and close the log.
    if let Some(c) = gw.replica() {
        c.stop();
    }
    let gw2 = gw.clone();
    let _ = tokio::task::spawn_blocking(move || gw2.close_log()).await;
    result
}

/// Serves the admin listener on a runtime of its own, one worker thread:
/// health, metrics and the authority feed stay responsive however long the
/// public side's run queue grows under a flood (the operating system
/// schedules the admin thread by itself, not behind thousands of public
/// connections' tasks). Ends when `shutdown` does and every admin
/// connection has drained.
fn admin_thread(
    listener: TcpListener,
    gw: Arc<Gateway>,
    settings: ServerSettings,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<std::thread::JoinHandle<()>, RunError> {
    let task = |e: std::io::Error| RunError::Task(format!("starting the admin listener's thread: {e}"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("healthgate-admin")
        .enable_all()
        .build()
        .map_err(task)?;
    // A listener belongs to the runtime it was registered with: hand the
    // socket over, registered again on the admin runtime.
    let listener = {
        let _admin = runtime.enter();
        TcpListener::from_std(listener.into_std().map_err(task)?).map_err(task)?
    };
    std::thread::Builder::new()
        .name("healthgate-admin".into())
        .spawn(move || {
            runtime.block_on(crate::serving::http::serve(listener, Listener::Admin, gw, settings, tls, shutdown));
            // Blocking tasks still running (a tracing query cut short)
            // are not waited for.
            runtime.shutdown_background();
        })
        .map_err(task)
}

/// Periodic snapshots and retention purges, off the request path.
async fn housekeeping(gw: Arc<Gateway>, snapshot_every: std::time::Duration, purge_every: std::time::Duration) {
    let mut snap = tokio::time::interval(snapshot_every);
    let mut purge = tokio::time::interval(purge_every);
    snap.tick().await;
    loop {
        tokio::select! {
            _ = snap.tick() => {
                let g = gw.clone();
                match tokio::task::spawn_blocking(move || g.write_snapshot()).await {
                    Ok(Ok(lsn)) => tracing::debug!(lsn, "snapshot written"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "snapshot failed"),
                    Err(e) => tracing::warn!(error = %e, "snapshot task failed"),
                }
            }
            _ = purge.tick() => {
                let g = gw.clone();
                let now = gw.now();
                match tokio::task::spawn_blocking(move || g.purge(now)).await {
                    Ok(Ok((v, s))) if v + s > 0 => tracing::info!(visits = v, segments = s, "retention purge"),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "retention purge failed"),
                    Err(e) => tracing::warn!(error = %e, "retention purge task failed"),
                }
            }
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// SIGHUP re-reads the configuration, like `POST /v1/admin/reload`.
async fn reload_on_sighup(gw: Arc<Gateway>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot install the SIGHUP handler; reload with POST /v1/admin/reload");
        return;
    };
    while hup.recv().await.is_some() {
        // Errors are logged and counted by `reload`; the running snapshot stays.
        let _ = gw.reload();
    }
}
