use super::*;

/// Fails with the errors it was given, then hands out one connected pair (its other end
/// kept, so the connection stays open), then waits forever.
struct Faulty {
    errors: Vec<i32>,
    sheds: Arc<std::sync::atomic::AtomicUsize>,
    kept: Vec<UnixStream>,
}

impl Acceptor for Faulty {
    async fn accept(&mut self) -> io::Result<UnixStream> {
        if let Some(errno) = self.errors.pop() {
            return Err(io::Error::from_raw_os_error(errno));
        }
        if !self.kept.is_empty() {
            std::future::pending::<()>().await;
        }
        let (a, b) = UnixStream::pair()?;
        self.kept.push(b);
        Ok(a)
    }

    fn shed(&mut self) -> bool {
        self.sheds.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        true
    }
}

fn unlimited() -> Limits {
    Limits {
        total: 100,
        per_client: 100,
        per_user: 100,
    }
}

#[tokio::test(start_paused = true)]
async fn accept_errors_pause_the_loop_but_never_end_it() {
    let sheds = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let errors = [
        libc::EMFILE,
        libc::ENFILE,
        libc::ENOBUFS,
        libc::ENOMEM,
        libc::ECONNABORTED,
        libc::EINVAL,
    ]
    .repeat(5);
    let acceptor = Faulty {
        errors,
        sheds: sheds.clone(),
        kept: vec![],
    };
    let (tx, mut rx) = mpsc::channel(4);
    let admission = Admission::new(unlimited(), 0);
    let task = tokio::spawn(accept_loop(acceptor, admission.clone(), tx));
    let conn = rx.recv().await.expect("a connection after 30 errors");
    assert!(conn.is_ok());
    // Out of descriptors (EMFILE, ENFILE) sheds a pending connection each time.
    assert_eq!(sheds.load(std::sync::atomic::Ordering::SeqCst), 10);
    assert_eq!(admission.held(), 1);
    drop(conn);
    assert_eq!(admission.held(), 0);
    drop(rx);
    task.await
        .expect("the loop ends when the server stops listening");
}

#[test]
fn the_backoff_grows_to_a_second() {
    let delays: Vec<u128> = (1..=12)
        .map(|errors| Backoff { errors }.delay().as_millis())
        .collect();
    assert_eq!(delays[..4], [5, 10, 20, 40]);
    assert_eq!(*delays.last().unwrap(), 1000);
}

#[test]
fn the_bounds_leave_a_reserve_of_descriptors() {
    let l = limits_for(1024, 100_000, 64);
    assert_eq!(
        l,
        Limits {
            total: 768,
            per_client: 64,
            per_user: 384
        }
    );
    assert_eq!(limits_for(1_048_576, 4096, 64).total, 4096);
    assert_eq!(limits_for(100, 4096, 64).total, 36);
}

#[tokio::test]
async fn peer_credentials_carry_the_supplementary_groups() {
    let (a, _b) = UnixStream::pair().unwrap();
    let peer = peer_of(&a).unwrap();
    assert_eq!(peer.pid as u32, std::process::id());
    assert_eq!(peer.uid, nix::unistd::geteuid().as_raw());
    let mut mine: Vec<u32> = nix::unistd::getgroups()
        .unwrap()
        .iter()
        .map(|g| g.as_raw())
        .collect();
    let mut theirs = peer.groups.clone();
    mine.sort();
    theirs.sort();
    assert_eq!(theirs, mine);
}
