//! Process wiring: logging, config loading, the proxy, the admin server, reload and signals.

use anyhow::Context;
use otlp_mesh_admin::AdminState;
use otlp_mesh_config::reload::{ConfigWatcher, ReloadStats};
use otlp_mesh_config::{LoadedConfig, load_file};
use otlp_mesh_proxy::Proxy;
use otlp_mesh_telemetry::Registry;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

/// Structured logs on stderr; `RUST_LOG` overrides `--log-level`.
pub fn init_logging(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// `otlp-mesh validate`: 0 when valid, 1 listing every error.
pub fn validate(path: &Path) -> ExitCode {
    match load_file(path) {
        Ok(loaded) => {
            let c = &loaded.config;
            println!(
                "{}: valid ({} listeners, {} clusters, {} routes; hash {})",
                path.display(),
                c.listeners.len(),
                c.clusters.len(),
                c.listeners.iter().map(|l| l.routes.len()).sum::<usize>(),
                loaded.hash
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            for line in e.messages() {
                eprintln!("{line}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The tokio runtime: with one worker, everything runs on the calling thread (no work-stealing
/// scheduler to pay for: its queues, atomics and cross-thread wake-ups), like one nginx worker.
fn runtime(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let workers = workers.map(|n| n.max(1));
    let mut b = if workers == Some(1) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    b.enable_all().thread_name("otlp-mesh-worker");
    if let Some(n) = workers.filter(|&n| n > 1) {
        b.worker_threads(n);
    }
    b.build().context("cannot start the tokio runtime")
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("otlp-mesh: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `otlp-mesh run --config FILE`.
pub fn run_file(path: PathBuf, workers: Option<usize>) -> ExitCode {
    let loaded = match load_file(&path) {
        Ok(l) => l,
        Err(e) => {
            for line in e.messages() {
                eprintln!("{line}");
            }
            return ExitCode::FAILURE;
        }
    };
    let rt = match runtime(workers) {
        Ok(rt) => rt,
        Err(e) => return exit(Err(e)),
    };
    exit(rt.block_on(serve(loaded, Some(path), |_| {})))
}

/// `otlp-mesh demo`: example services, the proxy in front, background traffic.
pub fn run_demo(port: u16, admin_port: u16, rps: u32, workers: Option<usize>) -> ExitCode {
    let rt = match runtime(workers) {
        Ok(rt) => rt,
        Err(e) => return exit(Err(e)),
    };
    exit(rt.block_on(async move {
        let demo = crate::demo::start(port, admin_port).await?;
        let loaded = LoadedConfig::from_str(&demo.config_yaml, "<demo>")
            .map_err(|e| anyhow::anyhow!("demo config is invalid (a bug): {e}"))?;
        let guide = demo.guide;
        serve(loaded, None, move |addrs| {
            if let Some(edge) = addrs.iter().find(|(n, _)| n == "edge").map(|(_, a)| *a)
                && rps > 0
            {
                crate::demo::spawn_traffic(edge, rps);
            }
            println!("{guide}");
        })
        .await
    }))
}

/// Runs the proxy and admin server until SIGTERM/SIGINT, then drains.
/// `on_ready` gets the bound listener addresses once everything accepts connections.
async fn serve(
    loaded: LoadedConfig,
    path: Option<PathBuf>,
    on_ready: impl FnOnce(&[(String, SocketAddr)]),
) -> anyhow::Result<()> {
    let started = Instant::now();
    let registry = Registry::new();
    let proxy = Proxy::new(registry.clone());
    let reload = Arc::new(ReloadStats::default());
    let loaded = Arc::new(loaded);
    let drain = loaded.config.runtime.drain_timeout;

    let admin_bind = &loaded.config.admin.bind.value;
    let admin_addr: SocketAddr = admin_bind
        .parse()
        .with_context(|| format!("admin.bind `{admin_bind}` is not a socket address"))?;
    let admin_socket = tokio::net::TcpListener::bind(admin_addr)
        .await
        .with_context(|| format!("cannot bind the admin server to {admin_addr}"))?;
    let admin_addr = admin_socket.local_addr().unwrap_or(admin_addr);

    let telemetry = match &loaded.config.telemetry {
        Some(cfg) => {
            let t = otlp_mesh_telemetry::Telemetry::start(&cfg.value, registry)
                .await
                .context("cannot start telemetry")?;
            proxy.set_recorder(t.recorder());
            Some(t)
        }
        None => None,
    };

    if let Err(errors) = proxy.apply(loaded.clone()).await {
        anyhow::bail!("cannot start: {}", errors.join("; "));
    }

    let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let admin_state = AdminState {
        proxy: proxy.clone(),
        reload: reload.clone(),
        started,
        telemetry: telemetry.clone(),
    };
    let admin = tokio::spawn(otlp_mesh_admin::serve(
        admin_socket,
        admin_state,
        async move {
            let _ = admin_stop_rx.await;
        },
    ));

    let mut sighup = signal(tokio::signal::unix::SignalKind::hangup())?;
    if let Some(path) = path {
        let (watcher, mut updates) = ConfigWatcher::new(path, loaded.clone(), reload.clone());
        let trigger = watcher.trigger();
        tokio::spawn(watcher.run());
        tokio::spawn(async move {
            while sighup.recv().await.is_some() {
                tracing::info!("SIGHUP: re-reading config");
                trigger.notify_one();
            }
        });
        let proxy = proxy.clone();
        let reload = reload.clone();
        let running_telemetry = loaded.config.telemetry.as_ref().map(|t| t.value.clone());
        tokio::spawn(async move {
            while updates.changed().await.is_ok() {
                let next = updates.borrow_and_update().clone();
                if next.config.telemetry.as_ref().map(|t| &t.value) != running_telemetry.as_ref() {
                    tracing::warn!(
                        "the telemetry section changed; it takes effect at the next restart"
                    );
                }
                match proxy.apply(next.clone()).await {
                    Ok(()) => {
                        reload.record_success();
                        tracing::info!(hash = %next.hash, "config applied");
                    }
                    Err(errors) => {
                        for e in &errors {
                            tracing::error!("config not applied, keeping the running config: {e}");
                        }
                        reload.record_failure(&errors);
                    }
                }
            }
        });
    }

    let addrs: Vec<(String, SocketAddr)> = proxy
        .snapshot()
        .map(|s| s.listeners.iter().map(|(n, a)| (n.clone(), *a)).collect())
        .unwrap_or_default();
    let listing: Vec<String> = addrs
        .iter()
        .map(|(n, a)| format!("{n}=http://{a}"))
        .collect();
    let otlp: Vec<String> = telemetry
        .iter()
        .flat_map(|t| t.receiver_addrs())
        .map(|(w, a)| format!("{w}={a}"))
        .collect();
    tracing::info!(admin = %admin_addr, listeners = %listing.join(" "), otlp = %otlp.join(" "), "otlp-mesh ready");
    on_ready(&addrs);

    let mut sigterm = signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
    }
    proxy.shutdown(drain.into()).await;
    if let Some(t) = &telemetry {
        t.shutdown(drain.into()).await;
    }
    let _ = admin_stop_tx.send(());
    let _ = admin.await;
    tracing::info!("stopped");
    Ok(())
}

fn signal(kind: tokio::signal::unix::SignalKind) -> anyhow::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(kind).context("cannot install a signal handler")
}
