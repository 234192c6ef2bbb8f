//! Crypto throughput of the credential paths, next to the raw primitives and `openssl speed`.
//!
//! Run with `make bench` (`cargo bench --bench crypto`). Everything runs on one thread (as
//! `openssl speed` does without `-multi`), in one process, interleaved: every round runs each
//! benchmark for `BENCH_SECS` (default 1) seconds and `openssl speed -seconds 1` once per
//! algorithm, and there are `BENCH_ROUNDS` (default 5) rounds. The table shows the best and the
//! median round of each; the ratios use the best round of both sides, since on a shared machine
//! noise only ever slows a run down (the median ratio is printed alongside).
//!
//! Rates are operations per second of CPU time, like `openssl speed`, which runs for `-seconds`
//! of wall time but divides by its user CPU time unless given `-elapsed`. Dividing by wall time
//! would compare a process that was descheduled by a concurrent build against one that was not.
//! Ours counts user + system time of the benchmark thread (the `getrandom` calls on the ECDSA
//! paths are real cost). The `on-CPU` column is CPU time / wall time: well below 100% means the
//! machine was busy during that benchmark.
//!
//! Measured:
//! - pod certificate minting: `CertificateAuthority::issue` for an ECDSA P-256 pod key (keygen,
//!   signing by the CA, PEM encoding), against aws-lc's ECDSA P-256 signing and `openssl speed
//!   ecdsap256`;
//! - capability tokens signed EdDSA: `token::sign`, `verify::verify_signed` (signature, header and
//!   claims) and the full `Verifier::verify` (plus certificate chain, binding and grant checks),
//!   against aws-lc's Ed25519 over a message of the token's signing-input length and `openssl
//!   speed ed25519`;
//! - capability tokens signed ES256 (the default algorithm): `token::sign` and
//!   `verify::verify_signed` against `openssl speed ecdsap256` (target: at least 0.9x each).
//!
//! Two "what-if" rows replicate the mint path outside the crate to show where its time goes (see
//! `MintReplica`); they are not the product code path.

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1_SIGNING, ED25519,
};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SignatureAlgorithm, PKCS_ECDSA_P256_SHA256,
};
use writ::pki::{
    spiffe_id, thumbprint, token, Actor, Capability, CertificateAuthority, CertificateIssuer as _, Claims,
    Confirmation, GrantRef, JwkSet, KeyAlgorithm, PodCertificateRequest, PodRef, SigningKey, Task, TokenAlgorithm,
};
use writ::verify::{verify_signed, Attempt, Verifier, DEFAULT_SKEW_SECS};

/// One benchmark: a name, the operations per CPU second of each round, and the share of wall time
/// it was on a CPU (unknown for `openssl speed`).
struct Series {
    name: String,
    samples: Vec<f64>,
    on_cpu: Vec<f64>,
}

impl Series {
    fn new(name: impl Into<String>) -> Self {
        Series { name: name.into(), samples: Vec::new(), on_cpu: Vec::new() }
    }

    fn min_on_cpu(&self) -> Option<f64> {
        self.on_cpu.iter().copied().reduce(f64::min)
    }

    fn best(&self) -> Option<f64> {
        self.samples.iter().copied().reduce(f64::max)
    }

    fn worst(&self) -> Option<f64> {
        self.samples.iter().copied().reduce(f64::min)
    }

    fn median(&self) -> Option<f64> {
        if self.samples.is_empty() {
            return None;
        }
        let mut sorted = self.samples.clone();
        sorted.sort_by(f64::total_cmp);
        let mid = sorted.len() / 2;
        Some(if sorted.len() % 2 == 1 { sorted[mid] } else { (sorted[mid - 1] + sorted[mid]) / 2.0 })
    }
}

/// A benchmark body: one operation per call.
struct Bench<'a> {
    series: Series,
    op: Box<dyn FnMut() + 'a>,
}

impl<'a> Bench<'a> {
    fn new(name: &str, op: impl FnMut() + 'a) -> Self {
        Bench { series: Series::new(name), op: Box::new(op) }
    }
}

/// CPU time (user + system) consumed so far by the calling thread.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `clock_gettime` only writes the `timespec` it is given, which outlives the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Calls `op` until `dur` of wall time has passed (as `openssl speed -seconds` does) and returns
/// (operations per CPU second, CPU time / wall time). Every operation measured here takes
/// microseconds, so reading the (vDSO) wall clock after each call costs well under 1%.
fn ops_per_sec(op: &mut dyn FnMut(), dur: Duration) -> (f64, f64) {
    let cpu_start = thread_cpu_time();
    let start = Instant::now();
    let mut n = 0u64;
    loop {
        op();
        n += 1;
        let wall = start.elapsed();
        if wall >= dur {
            let cpu = (thread_cpu_time() - cpu_start).as_secs_f64();
            return (n as f64 / cpu, cpu / wall.as_secs_f64());
        }
    }
}

/// `openssl speed -seconds 1 <alg>`: the (sign/s, verify/s) columns of the line containing `label`.
fn openssl_speed(alg: &str, label: &str) -> Result<(f64, f64), String> {
    let out = Command::new("openssl")
        .args(["speed", "-seconds", "1", alg])
        .output()
        .map_err(|e| format!("running openssl: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("openssl speed {alg} failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let line =
        stdout.lines().find(|l| l.contains(label)).ok_or_else(|| format!("no {label:?} line in openssl output"))?;
    // " 256 bits ecdsa (nistp256)   0.0000s   0.0000s  67228.3  24244.0": the last two columns.
    let rest = &line[line.find(label).map_or(0, |i| i + label.len())..];
    let nums: Vec<f64> = rest.split_whitespace().filter_map(|t| t.parse().ok()).collect();
    match nums[..] {
        [.., sign, verify] => Ok((sign, verify)),
        _ => Err(format!("cannot parse openssl line {line:?}")),
    }
}

/// Whether `openssl` can be run at all.
fn openssl_version() -> Option<String> {
    let out = Command::new("openssl").arg("version").output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

fn cpu_model() -> String {
    read_trimmed("/proc/cpuinfo")
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(str::trim)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// Claims as the grant controller mints them.
fn claims(sub: &str, cert_thumbprint: &str, now: i64) -> Claims {
    Claims {
        iss: "https://writ.writ-system.svc".into(),
        sub: sub.into(),
        aud: vec!["deploy-api".into()],
        iat: now,
        nbf: now,
        exp: now + 900,
        jti: token::new_jti().expect("jti"),
        cap: vec![Capability {
            action: "k8s:deployments.patch".into(),
            resource: "k8s:staging/deployments/web".into(),
        }],
        task: Task { id: "PR-1234".into(), intent: Some("roll out web v2".into()) },
        grant: GrantRef { namespace: "ci".into(), name: "deploy-web-1234".into(), uid: "grant-uid".into() },
        pod: PodRef { name: "release-bot-7d9f-abcde".into(), uid: "pod-uid".into() },
        cnf: Confirmation { x5t_s256: cert_thumbprint.into(), jkt: None },
        act: Some(Actor {
            sub: "spiffe://cluster.local/ns/ci/agent/planner".into(),
            act: Some(Box::new(Actor { sub: "alice@example.com".into(), act: None })),
        }),
        req: "alice@example.com".into(),
        apr: None,
        txn: None,
        gjti: None,
    }
}

/// A raw uncompressed P-256 public key for rcgen.
struct RawP256(Vec<u8>);

impl PublicKeyData for RawP256 {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

/// A copy of `CertificateAuthority::issue` built from public rcgen/aws-lc APIs, to split the cost of
/// the mint path. With `raw_keygen` it makes the pod key with aws-lc's `generate_pkcs8` alone and
/// hands rcgen only the public key; without it, it uses `rcgen::KeyPair::generate_for`, as
/// `KeyAlgorithm::generate_key` does, which also loads the new key for signing (loading may check
/// the public key against the private scalar: one more P-256 base-point multiplication, though the
/// pod key never signs anything during minting).
struct MintReplica {
    issuer: Issuer<'static, KeyPair>,
    bundle_pem: String,
    rng: SystemRandom,
}

impl MintReplica {
    fn new(ca: &CertificateAuthority) -> Self {
        let key = KeyPair::from_pem(&ca.key_pem()).expect("CA key");
        let issuer = Issuer::from_ca_cert_pem(ca.cert_pem(), key).expect("CA issuer");
        MintReplica { issuer, bundle_pem: ca.cert_pem().to_owned(), rng: SystemRandom::new() }
    }

    /// Returns (cert PEM, chain PEM, key PEM, thumbprint), like `IssuedCertificate`.
    fn issue(&self, req: &PodCertificateRequest, raw_keygen: bool) -> (String, String, String, String) {
        req.validate().expect("valid request");
        let not_after = req.not_before + req.ttl_secs;
        let mut serial = [0u8; 16];
        self.rng.fill(&mut serial).expect("rng");
        serial[0] |= 0x40;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, req.pod_name.as_str());
        dn.push(DnType::OrganizationName, req.namespace.as_str());
        let uid = DnValue::PrintableString(req.pod_uid.as_str().try_into().expect("printable"));
        dn.push(DnType::CustomDnType(vec![2, 5, 4, 5]), uid);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(req.spiffe_id.as_str().try_into().expect("ia5"))];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let time = |s| x509_parser::time::ASN1Time::from_timestamp(s).expect("time").to_datetime();
        params.not_before = time(req.not_before);
        params.not_after = time(not_after);
        let (cert, key_pem) = if raw_keygen {
            let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &self.rng).expect("keygen");
            // aws-lc's P-256 PKCS#8 ends with the public key: BIT STRING (66 bytes) 00 04 x y.
            let der = doc.as_ref();
            let public = &der[der.len() - 65..];
            assert_eq!(&der[der.len() - 68..der.len() - 64], [0x03, 0x42, 0x00, 0x04], "aws-lc PKCS#8 layout");
            let cert = params.signed_by(&RawP256(public.to_vec()), &self.issuer).expect("sign");
            (cert, pem::encode(&pem::Pem::new("PRIVATE KEY", der)))
        } else {
            let key = KeyAlgorithm::EcdsaP256.generate_key().expect("keygen");
            (params.signed_by(&key, &self.issuer).expect("sign"), key.serialize_pem())
        };
        let cert_pem = cert.pem();
        let chain_pem = format!("{cert_pem}{}", self.bundle_pem);
        (cert_pem, chain_pem, key_pem, thumbprint(cert.der()))
    }
}

/// `RATIO <name> <x>x (target >= <t>x) OK|MISSED`, or `(info)` without a target.
fn ratio_line(name: &str, num: &Series, den: &Series, target: Option<f64>, note: &str) {
    let (Some(best_n), Some(best_d), Some(med_n), Some(med_d)) = (num.best(), den.best(), num.median(), den.median())
    else {
        println!("RATIO {name} n/a (no samples)");
        return;
    };
    let r = best_n / best_d;
    let verdict = match target {
        Some(t) if r >= t => format!("(target >= {t}x) OK"),
        Some(t) => format!("(target >= {t}x) MISSED"),
        None => "(info)".to_owned(),
    };
    println!("RATIO {name} {r:.2}x {verdict}  [median {:.2}x]{note}", med_n / med_d);
}

fn main() {
    // `cargo bench` passes `--bench` (and any filter); this harness takes no arguments.
    let rounds: usize = env_or("BENCH_ROUNDS", 5).max(1);
    let secs: f64 = env_or("BENCH_SECS", 1.0_f64).max(0.05);
    let dur = Duration::from_secs_f64(secs);
    let now = writ::pki::now_unix();

    // Fixtures.
    let ca = CertificateAuthority::generate("writ bench CA", now - 3600, 86_400 * 365).expect("CA");
    let spiffe = spiffe_id("cluster.local", "ci", "release-bot");
    let req = PodCertificateRequest {
        spiffe_id: spiffe.clone(),
        namespace: "ci".into(),
        pod_name: "release-bot-7d9f-abcde".into(),
        pod_uid: "6f1c2a9e-3b7d-4e0a-9c51-2f8d4b6a7e10".into(),
        key_algorithm: KeyAlgorithm::EcdsaP256,
        not_before: now - 60,
        ttl_secs: 3600,
    };
    let pod = ca.issue(&req).expect("issue");
    let replica = MintReplica::new(&ca);

    let signing_key = SigningKey::generate_for(TokenAlgorithm::EdDsa).expect("signing key");
    let es_key = SigningKey::generate_for(TokenAlgorithm::Es256).expect("signing key");
    let jwks = JwkSet { keys: vec![signing_key.public_jwk()] };
    let es_jwks = JwkSet { keys: vec![es_key.public_jwk()] };
    let token_claims = claims(&spiffe, &pod.thumbprint, now);
    let jwt = token::sign(&signing_key, &token_claims).expect("token");
    let es_jwt = token::sign(&es_key, &token_claims).expect("token");
    assert_eq!(verify_signed(&es_jwt, &es_jwks, now, DEFAULT_SKEW_SECS).expect("ES256 verifies"), token_claims);
    let signing_input = &jwt[..jwt.rfind('.').expect("three parts")];
    let verifier = Verifier::new(&ca.bundle_pem(), jwks.clone()).expect("verifier");
    let attempt =
        Attempt { audience: "deploy-api", action: "k8s:deployments.patch", resource: "k8s:staging/deployments/web" };
    assert_eq!(verify_signed(&jwt, &jwks, now, DEFAULT_SKEW_SECS).expect("verify_signed"), token_claims);
    verifier.verify(&jwt, pod.cert_pem.as_bytes(), &attempt, now).expect("Verifier::verify");
    // The replica's certificates are as good as the real ones: they chain, carry the SPIFFE ID,
    // and their key PEM holds the certified key.
    for raw_keygen in [false, true] {
        let (cert_pem, _, key_pem, thumb) = replica.issue(&req, raw_keygen);
        let bound = token::sign(&signing_key, &claims(&spiffe, &thumb, now)).expect("token");
        verifier.verify(&bound, cert_pem.as_bytes(), &attempt, now).expect("replica certificate verifies");
        let key = KeyPair::from_pem(&key_pem).expect("replica key");
        let cert = writ::pki::cert::parse_certificates(cert_pem.as_bytes()).expect("pem").remove(0);
        let spki = key.subject_public_key_info();
        assert!(cert.windows(spki.len()).any(|w| w == spki), "replica key matches its certificate");
    }

    let rng = SystemRandom::new();
    let p256_doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("p256");
    let p256 = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, p256_doc.as_ref()).expect("p256");
    let digest_sized = [0x5au8; 32];
    let ed_doc = Ed25519KeyPair::generate_pkcs8(&rng).expect("ed25519");
    let ed = Ed25519KeyPair::from_pkcs8(ed_doc.as_ref()).expect("ed25519");
    let ed_msg = vec![b'x'; signing_input.len()];
    let ed_sig = ed.sign(&ed_msg);
    let ed_public = UnparsedPublicKey::new(&ED25519, ed.public_key().as_ref().to_vec());
    ed_public.verify(&ed_msg, ed_sig.as_ref()).expect("ed25519 verifies");
    let ed_sig20 = ed.sign(&ed_msg[..20]);

    let mut benches = vec![
        Bench::new("mint: CertificateAuthority::issue (P-256 pod key)", || {
            black_box(ca.issue(black_box(&req)).expect("issue"));
        }),
        Bench::new("  what-if replica: rcgen generate_for keygen", || {
            black_box(replica.issue(black_box(&req), false));
        }),
        Bench::new("  what-if replica: aws-lc generate_pkcs8 keygen", || {
            black_box(replica.issue(black_box(&req), true));
        }),
        Bench::new("aws-lc P-256 sign (ECDSA_P256_SHA256_ASN1)", || {
            black_box(p256.sign(&rng, black_box(&digest_sized)).expect("sign"));
        }),
        Bench::new("aws-lc P-256 keygen + sign by CA key", || {
            let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("keygen");
            black_box(doc);
            black_box(p256.sign(&rng, black_box(&digest_sized)).expect("sign"));
        }),
        Bench::new("aws-lc P-256 keygen + load + sign (rcgen)", || {
            let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("keygen");
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, doc.as_ref()).expect("load");
            black_box(pair);
            black_box(p256.sign(&rng, black_box(&digest_sized)).expect("sign"));
        }),
        Bench::new("token sign EdDSA: pki::token::sign", || {
            black_box(token::sign(&signing_key, black_box(&token_claims)).expect("sign"));
        }),
        Bench::new("token verify EdDSA: verify::verify_signed", || {
            black_box(verify_signed(black_box(&jwt), &jwks, now, DEFAULT_SKEW_SECS).expect("verify"));
        }),
        Bench::new("token verify EdDSA: Verifier::verify (+cert chain)", || {
            black_box(verifier.verify(black_box(&jwt), pod.cert_pem.as_bytes(), &attempt, now).expect("verify"));
        }),
        Bench::new(&format!("aws-lc Ed25519 sign ({} B)", ed_msg.len()), || {
            black_box(ed.sign(black_box(&ed_msg)));
        }),
        Bench::new(&format!("aws-lc Ed25519 verify ({} B)", ed_msg.len()), || {
            ed_public.verify(black_box(&ed_msg), black_box(ed_sig.as_ref())).expect("verify");
        }),
        Bench::new("aws-lc Ed25519 sign (20 B, as openssl speed)", || {
            black_box(ed.sign(black_box(&ed_msg[..20])));
        }),
        Bench::new("aws-lc Ed25519 verify (20 B, as openssl speed)", || {
            ed_public.verify(black_box(&ed_msg[..20]), black_box(ed_sig20.as_ref())).expect("verify");
        }),
        Bench::new("token sign ES256: pki::token::sign", || {
            black_box(token::sign(&es_key, black_box(&token_claims)).expect("sign"));
        }),
        Bench::new("token verify ES256: verify::verify_signed", || {
            black_box(verify_signed(black_box(&es_jwt), &es_jwks, now, DEFAULT_SKEW_SECS).expect("verify"));
        }),
    ];
    const MINT: usize = 0;
    const LIB_P256_SIGN: usize = 3;
    const TOKEN_SIGN: usize = 6;
    const TOKEN_VERIFY: usize = 7;
    const FULL_VERIFY: usize = 8;
    const LIB_ED_SIGN: usize = 9;
    const LIB_ED_VERIFY: usize = 10;
    const LIB_ED_SIGN_20: usize = 11;
    const LIB_ED_VERIFY_20: usize = 12;
    const ES_TOKEN_SIGN: usize = 13;
    const ES_TOKEN_VERIFY: usize = 14;

    let openssl = openssl_version();
    let mut ossl_ecdsa_sign = Series::new("openssl speed ecdsap256: sign");
    let mut ossl_ecdsa_verify = Series::new("openssl speed ecdsap256: verify");
    let mut ossl_ed_sign = Series::new("openssl speed ed25519: sign");
    let mut ossl_ed_verify = Series::new("openssl speed ed25519: verify");
    let mut openssl_errors = Vec::new();

    println!("writ crypto benchmark: single thread, {rounds} rounds x {secs}s per benchmark, interleaved");
    println!("cpu: {} ({} logical CPUs)", cpu_model(), std::thread::available_parallelism().map_or(0, |n| n.get()));
    println!("loadavg at start: {}", read_trimmed("/proc/loadavg").unwrap_or_else(|| "unknown".into()));
    match &openssl {
        Some(v) => println!("openssl: {v}"),
        None => println!("openssl: not found on PATH; ratios are against aws-lc only"),
    }
    println!("token: {} bytes, signing input {} bytes", jwt.len(), signing_input.len());

    // Warm up caches, the allocator and CPU frequency.
    for b in &mut benches {
        ops_per_sec(&mut b.op, Duration::from_millis(100));
    }
    for round in 1..=rounds {
        eprint!("round {round}/{rounds}...");
        for b in &mut benches {
            let (rate, on_cpu) = ops_per_sec(&mut b.op, dur);
            b.series.samples.push(rate);
            b.series.on_cpu.push(on_cpu);
        }
        if openssl.is_some() {
            for (alg, label, sign, verify) in [
                ("ecdsap256", "256 bits ecdsa (nistp256)", &mut ossl_ecdsa_sign, &mut ossl_ecdsa_verify),
                ("ed25519", "253 bits EdDSA (Ed25519)", &mut ossl_ed_sign, &mut ossl_ed_verify),
            ] {
                match openssl_speed(alg, label) {
                    Ok((s, v)) => {
                        sign.samples.push(s);
                        verify.samples.push(v);
                    }
                    Err(e) => openssl_errors.push(e),
                }
            }
        }
        eprintln!(" done");
    }
    println!("loadavg at end:   {}", read_trimmed("/proc/loadavg").unwrap_or_else(|| "unknown".into()));
    for e in &openssl_errors {
        println!("openssl error: {e}");
    }

    let mut all: Vec<&Series> = benches.iter().map(|b| &b.series).collect();
    all.extend([&ossl_ecdsa_sign, &ossl_ecdsa_verify, &ossl_ed_sign, &ossl_ed_verify]);
    println!();
    println!(
        "{:<52} {:>12} {:>12} {:>10} {:>8} {:>8}",
        "benchmark (op/s = per CPU second)", "best op/s", "median op/s", "best us/op", "spread", "on-CPU"
    );
    println!("{}", "-".repeat(107));
    for s in all {
        let (Some(best), Some(median), Some(worst)) = (s.best(), s.median(), s.worst()) else {
            println!("{:<52} {:>12}", s.name, "n/a");
            continue;
        };
        let spread = 100.0 * (best - worst) / best;
        let on_cpu = s.min_on_cpu().map_or_else(|| "-".to_owned(), |f| format!("{:.0}%", 100.0 * f));
        println!("{:<52} {best:>12.0} {median:>12.0} {:>10.2} {spread:>7.1}% {on_cpu:>8}", s.name, 1e6 / best);
    }
    println!("(spread = (best - worst) / best over the rounds; on-CPU = lowest CPU/wall of the rounds;");
    println!(" openssl speed rates are per user CPU second, as it reports them; ratios below use best rounds)");
    println!();

    let s = |i: usize| &benches[i].series;
    let have_openssl = !ossl_ecdsa_sign.samples.is_empty() && !ossl_ed_sign.samples.is_empty();
    if have_openssl {
        ratio_line("mint_vs_openssl_ecdsa_sign", s(MINT), &ossl_ecdsa_sign, Some(0.5), "");
        ratio_line("token_sign_vs_openssl", s(TOKEN_SIGN), &ossl_ed_sign, Some(2.5), "");
        ratio_line("token_verify_vs_openssl", s(TOKEN_VERIFY), &ossl_ed_verify, Some(2.0), "");
        ratio_line("full_verify_vs_openssl", s(FULL_VERIFY), &ossl_ed_verify, None, "");
        ratio_line("es256_token_sign_vs_openssl_ecdsap256", s(ES_TOKEN_SIGN), &ossl_ecdsa_sign, Some(0.9), "");
        ratio_line("es256_token_verify_vs_openssl_ecdsap256", s(ES_TOKEN_VERIFY), &ossl_ecdsa_verify, Some(0.9), "");
        ratio_line("awslc_ecdsa_sign_vs_openssl", s(LIB_P256_SIGN), &ossl_ecdsa_sign, None, "");
        ratio_line("awslc_ed25519_sign_vs_openssl", s(LIB_ED_SIGN), &ossl_ed_sign, None, "");
        ratio_line("awslc_ed25519_verify_vs_openssl", s(LIB_ED_VERIFY), &ossl_ed_verify, None, "");
        ratio_line("awslc_ed25519_sign_20B_vs_openssl", s(LIB_ED_SIGN_20), &ossl_ed_sign, None, "");
        ratio_line("awslc_ed25519_verify_20B_vs_openssl", s(LIB_ED_VERIFY_20), &ossl_ed_verify, None, "");
        ratio_line("mint_vs_awslc_ecdsa_sign", s(MINT), s(LIB_P256_SIGN), None, "");
        ratio_line("token_sign_vs_awslc_ed25519_sign", s(TOKEN_SIGN), s(LIB_ED_SIGN), None, "");
        ratio_line("token_verify_vs_awslc_ed25519_verify", s(TOKEN_VERIFY), s(LIB_ED_VERIFY), None, "");
    } else {
        println!("openssl unavailable: targets are defined against openssl, shown here against aws-lc instead");
        let note = " (target defined vs openssl)";
        ratio_line("mint_vs_awslc_ecdsa_sign", s(MINT), s(LIB_P256_SIGN), Some(0.5), note);
        ratio_line("token_sign_vs_awslc", s(TOKEN_SIGN), s(LIB_ED_SIGN), Some(2.5), note);
        ratio_line("token_verify_vs_awslc", s(TOKEN_VERIFY), s(LIB_ED_VERIFY), Some(2.0), note);
        ratio_line("es256_token_sign_vs_awslc_ecdsa_sign", s(ES_TOKEN_SIGN), s(LIB_P256_SIGN), Some(0.9), note);
    }
    ratio_line("full_verify_vs_token_verify", s(FULL_VERIFY), s(TOKEN_VERIFY), None, "");
}
