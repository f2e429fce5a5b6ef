//! OTLP exporters (to be written): gRPC and HTTP senders with spec retry, memory and persistent queues.
