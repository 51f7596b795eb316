# The verbs people use. Each is a thin wrapper; the scripts work without just.

# Build the release binary (target/release/moat)
build:
    cargo build --release --locked

# Formatting, lints and the whole test suite (installs what it needs)
test:
    ./scripts/test.sh

# Run the offline demo against a local stand-in upstream
demo:
    ./scripts/demo.sh

# Formatting and lints only
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets --locked --features moat/vm-tests -- -D warnings

# Side-by-side benchmark: direct vs mitmproxy vs Moat (writes bench/results/)
bench:
    ./scripts/bench.sh

# Fuzz the ClientHello/HTTP sniffer, the substitution engine and the route
# path normalizer (targets peek, substitute, path; needs nightly
# and cargo-fuzz; never run by CI, whose tests replay the seed corpora)
fuzz target="peek" seconds="60":
    cd fuzz && cargo +nightly fuzz run {{target}} -- -max_total_time={{seconds}}
