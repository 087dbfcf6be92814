//! The monoio driver choice, shared by the load generator and the reference servers so that
//! they run the same driver as Kapsel (`KAPSEL_IO_DRIVER`: `auto`, `uring` or `legacy`).

use std::future::Future;

/// Which monoio driver to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// io_uring when the kernel allows it, else epoll (Kapsel's default).
    Auto,
    /// io_uring.
    Uring,
    /// epoll (monoio's legacy driver).
    Legacy,
}

impl Driver {
    /// Parses a `KAPSEL_IO_DRIVER` value; unset or empty is `auto`.
    ///
    /// # Errors
    ///
    /// Any other value.
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        match value.unwrap_or("").trim() {
            "" | "auto" => Ok(Self::Auto),
            "uring" | "io_uring" => Ok(Self::Uring),
            "legacy" | "epoll" => Ok(Self::Legacy),
            other => Err(format!("KAPSEL_IO_DRIVER must be auto, uring or legacy, not `{other}`")),
        }
    }

    /// `KAPSEL_IO_DRIVER` from the environment.
    ///
    /// # Errors
    ///
    /// A value that does not parse.
    pub fn from_env() -> Result<Self, String> {
        Self::parse(std::env::var("KAPSEL_IO_DRIVER").ok().as_deref())
    }

    /// `Uring` or `Legacy`: what `Auto` means on this kernel.
    pub fn resolve(self) -> Self {
        match self {
            Self::Auto if monoio::utils::detect_uring() => Self::Uring,
            Self::Auto => Self::Legacy,
            chosen => chosen,
        }
    }

    /// The name `KAPSEL_IO_DRIVER` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Uring => "uring",
            Self::Legacy => "legacy",
        }
    }
}

/// Runs `future` to completion on a new single-threaded monoio runtime (timer enabled) with
/// `driver`, on the calling thread.
///
/// # Errors
///
/// The runtime could not be built (io_uring asked for where it is unavailable).
pub fn block_on<F: Future>(driver: Driver, future: F) -> Result<F::Output, String> {
    match driver.resolve() {
        Driver::Uring | Driver::Auto => {
            let mut runtime = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .enable_timer()
                .build()
                .map_err(|error| format!("cannot start an io_uring runtime: {error}"))?;
            Ok(runtime.block_on(future))
        }
        Driver::Legacy => {
            let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .map_err(|error| format!("cannot start an epoll runtime: {error}"))?;
            Ok(runtime.block_on(future))
        }
    }
}
