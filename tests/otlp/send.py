"""Sends spans, metrics and logs to an OTLP endpoint with the OpenTelemetry Python SDK.

Usage: send.py <grpc|http> <endpoint> <service.name>
Prints one JSON object describing what was sent, for the Rust test to compare field by field.
"""
import json
import logging
import sys

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.trace import Status, StatusCode

protocol, endpoint, service = sys.argv[1], sys.argv[2], sys.argv[3]
if protocol == "grpc":
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    kw = dict(endpoint=endpoint, insecure=True)
    span_exp, metric_exp, log_exp = OTLPSpanExporter(**kw), OTLPMetricExporter(**kw), OTLPLogExporter(**kw)
else:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    span_exp = OTLPSpanExporter(endpoint=endpoint + "/v1/traces")
    metric_exp = OTLPMetricExporter(endpoint=endpoint + "/v1/metrics")
    log_exp = OTLPLogExporter(endpoint=endpoint + "/v1/logs")

resource = Resource.create({"service.name": service, "deployment.environment": "test"})

tp = TracerProvider(resource=resource)
tp.add_span_processor(SimpleSpanProcessor(span_exp))
tracer = tp.get_tracer("interop")

lp = LoggerProvider(resource=resource)
lp.add_log_record_processor(SimpleLogRecordProcessor(log_exp))
logger = logging.getLogger("interop")
logger.setLevel(logging.INFO)
logger.addHandler(LoggingHandler(level=logging.INFO, logger_provider=lp))

reader = PeriodicExportingMetricReader(metric_exp, export_interval_millis=3_600_000)
mp = MeterProvider(resource=resource, metric_readers=[reader])
meter = mp.get_meter("interop")

sent = {"spans": [], "logs": []}
with tracer.start_as_current_span("checkout", kind=trace.SpanKind.SERVER,
                                  attributes={"http.request.method": "POST", "order.items": 3}) as root:
    root.add_event("cart loaded", {"cart.size": 3})
    with tracer.start_as_current_span("charge card", kind=trace.SpanKind.CLIENT) as child:
        child.set_attribute("payment.provider", "acme")
        child.set_status(Status(StatusCode.ERROR, "card declined"))
        logger.warning("payment failed for order %s", "o-17")
        ctx = child.get_span_context()
        sent["logs"].append({"traceId": format(ctx.trace_id, "032x"), "spanId": format(ctx.span_id, "016x"),
                             "body": "payment failed for order o-17", "severity": "WARN"})
for s in (root, child):
    c = s.get_span_context()
    sent["spans"].append({
        "traceId": format(c.trace_id, "032x"), "spanId": format(c.span_id, "016x"), "name": s.name,
        "parentSpanId": format(s.parent.span_id, "016x") if s.parent else "",
        "start": str(s.start_time), "end": str(s.end_time),
    })

counter = meter.create_counter("orders.placed", unit="{order}", description="Orders placed")
counter.add(5, {"region": "eu"})
hist = meter.create_histogram("checkout.duration", unit="ms")
for v in (12.0, 30.0, 250.0):
    hist.record(v, {"region": "eu"})

ok = True
ok &= tp.force_flush()
ok &= lp.force_flush()
ok &= mp.force_flush()
tp.shutdown(); lp.shutdown(); mp.shutdown()
sent["flushed"] = bool(ok)
print(json.dumps(sent))
