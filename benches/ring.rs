//! Criterion benches of the ring's hot path, in one process on a heap region.
//!
//! - `ring/send_recv/N`: one thread reserves, writes N bytes, commits,
//!   publishes, then peeks, reads every byte and releases: the instruction
//!   cost of a frame with no cache-line transfer.
//! - `ring/stream/N`: a producer thread streams frames of N bytes to a
//!   consumer thread that reads every byte: cost per frame with the lines
//!   moving between cores.
//!
//! Cross-process figures with floors and baselines are in `isocall bench`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use isocall::WaitStrategy;
use isocall::ring::channel;
use isocall::ring::wait::SpinParker;

fn send_recv(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring/send_recv");
    for len in [8usize, 64, 1024] {
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::from_parameter(len), &len, |b, &len| {
            let (mut tx, mut rx) = channel(1 << 16, SpinParker).unwrap();
            let mut seq = 0u8;
            b.iter(|| {
                seq = seq.wrapping_add(1);
                let mut grant = tx.reserve(1, len).unwrap();
                grant.bytes_mut().fill(seq);
                grant.commit_all();
                tx.publish();
                let frame = rx.peek().unwrap().unwrap();
                let sum: u32 = frame.payload().iter().map(|&b| u32::from(b)).sum();
                black_box(sum);
                frame.release();
            });
        });
    }
    g.finish();
}

fn stream(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring/stream");
    g.measurement_time(Duration::from_secs(3));
    for len in [64usize, 4096] {
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::from_parameter(len), &len, |b, &len| {
            b.iter_custom(|iters| {
                let (mut tx, mut rx) = channel(1 << 20, SpinParker).unwrap();
                let consumer = std::thread::spawn(move || {
                    let mut sum = 0u64;
                    for _ in 0..iters {
                        let frame = rx.wait(WaitStrategy::BusySpin, None, || false).unwrap();
                        sum += frame.payload().iter().map(|&b| u64::from(b)).sum::<u64>();
                        frame.release();
                    }
                    sum
                });
                let start = Instant::now();
                for i in 0..iters {
                    let mut grant = tx
                        .reserve_wait(1, len, WaitStrategy::BusySpin, None, || false)
                        .unwrap();
                    grant.bytes_mut().fill(i as u8);
                    grant.commit_all();
                    tx.publish();
                }
                let sum = consumer.join().unwrap();
                let elapsed = start.elapsed();
                let expected: u64 = (0..iters).map(|i| u64::from(i as u8) * len as u64).sum();
                assert_eq!(sum, expected, "consumer read wrong bytes");
                elapsed
            });
        });
    }
    g.finish();
}

criterion_group!(benches, send_recv, stream);
criterion_main!(benches);
