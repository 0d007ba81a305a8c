// @ts-check
/**
 * OpenAI-shaped errors, with the statuses, types and codes of gateway/http/errors.py: a
 * client cannot tell from an error's shape whether the Worker or a gateway answered.
 */

// Seconds a client is asked to wait when no region can take its request now, as the gateway's
// (gateway/defaults.py NO_CANDIDATE_RETRY_AFTER_S).
export const NO_CANDIDATE_RETRY_AFTER_S = 5;

/** @type {Record<string, [number, string]>} code -> [HTTP status, OpenAI error type] */
const CODES = {
  unknown_url: [404, "invalid_request_error"],
  method_not_allowed: [405, "invalid_request_error"],
  request_too_large: [413, "invalid_request_error"],
  model_not_found: [404, "invalid_request_error"],
  model_not_available_in_region: [403, "invalid_request_error"],
  no_healthy_upstream: [503, "service_unavailable"],
  upstreams_at_capacity: [429, "rate_limit_error"],
  upstream_failed: [502, "upstream_error"],
  upstream_timeout: [504, "upstream_error"],
  edge_misconfigured: [500, "server_error"],
  internal_error: [500, "server_error"],
};

/**
 * @param {keyof typeof CODES} code @param {string} message
 * @param {Record<string, string>} [headers]
 */
export function errorResponse(code, message, headers = {}) {
  const [status, type] = CODES[code];
  // param: the field at fault (the model, as the gateway's model_not_found names it), else
  // null, as OpenAI's own errors carry it.
  const param = code.startsWith("model_not_") ? "model" : null;
  return new Response(JSON.stringify({ error: { message, type, param, code } }), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}
