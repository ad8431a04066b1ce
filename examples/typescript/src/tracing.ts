/**
 * The runner's own tracing: OpenTelemetry spans exported to Langfuse's OTLP endpoint, with an
 * async-hooks context manager (so the active span follows awaits) and the W3C propagator (so it
 * can be handed to a child process as TRACEPARENT).
 */
import { context, propagation, trace, type Tracer } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { BasicTracerProvider, BatchSpanProcessor } from "@opentelemetry/sdk-trace-base";

export interface Tracing {
  tracer: Tracer;
  shutdown: () => Promise<void>;
}

/** Spans to `${LANGFUSE_BASE_URL}/api/public/otel/v1/traces` with the project's keys. */
export function startTracing(serviceName: string): Tracing {
  const baseUrl = (process.env.LANGFUSE_BASE_URL ?? process.env.LANGFUSE_HOST ?? "https://cloud.langfuse.com")
    .replace(/\/$/, "");
  const auth = Buffer.from(`${process.env.LANGFUSE_PUBLIC_KEY}:${process.env.LANGFUSE_SECRET_KEY}`).toString("base64");
  const exporter = new OTLPTraceExporter({
    url: `${baseUrl}/api/public/otel/v1/traces`,
    headers: { Authorization: `Basic ${auth}`, "x-langfuse-ingestion-version": "4" },
  });
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({ "service.name": serviceName }),
    spanProcessors: [new BatchSpanProcessor(exporter)],
  });
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  trace.setGlobalTracerProvider(provider);
  return { tracer: provider.getTracer(serviceName), shutdown: () => provider.shutdown() };
}
