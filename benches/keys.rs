//! Cost of authenticating a request: a full argon2id verification against the cached
//! path that repeated requests with the same key take.
//!
//! Run with `cargo bench --bench keys`.

use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use rtask::keys::{KeyStore, PresentedKey};

const KEYS: &str = include_str!("../tests/fixtures/go-compat/keys.toml");
const API_KEYS: &str = include_str!("../tests/fixtures/go-compat/api-keys.txt");

fn verification(c: &mut Criterion) {
    let store = KeyStore::parse(Path::new("keys.toml"), KEYS).expect("fixture parses");
    let (name, key) = API_KEYS.trim().split_once(' ').expect("fixture line");
    let presented = PresentedKey::decode(key).expect("fixture key decodes");
    let entry = store.get(name).expect("fixture key present").clone();

    let mut group = c.benchmark_group("verify");
    group.sample_size(10);
    group.bench_function("argon2id_64mib", |b| {
        b.iter(|| assert!(entry.stored.matches(&presented.secret)));
    });
    group.finish();

    entry.cache(store.digest(&presented));
    c.bench_function("verify/cached", |b| {
        b.iter(|| assert!(entry.is_cached(&store.digest(&presented))));
    });
}

criterion_group!(benches, verification);
criterion_main!(benches);
