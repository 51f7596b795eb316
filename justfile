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
