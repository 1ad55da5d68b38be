-- wrk script for benchmarks/realtime.py: POST one iris row, report percentiles as one JSON line.
--
-- Environment:
--   KINFER_WRK_KIND   v1 (POST /v1/infer, Kinfer's JSON) or v2 (KServe v2 JSON, POST /v2/models/<m>/infer)
--   KINFER_WRK_MODEL  model name in the URL (v2) or the body (v1); default iris_classifier
--   KINFER_WRK_KEY    API key sent as "Authorization: Bearer <key>" (omitted when empty)
local kind = os.getenv("KINFER_WRK_KIND") or "v1"
local model = os.getenv("KINFER_WRK_MODEL") or "iris_classifier"
local key = os.getenv("KINFER_WRK_KEY") or ""

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
if key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end
if kind == "v2" then
  wrk.path = "/v2/models/" .. model .. "/infer"
  wrk.body = '{"inputs":[{"name":"features","datatype":"FP32","shape":[1,4],"data":[5.1,3.5,1.4,0.2]}]}'
else
  wrk.path = "/v1/infer"
  wrk.body = '{"model":"' .. model .. '","input":{"data":[5.1,3.5,1.4,0.2]}}'
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'KINFER_WRK {"requests":%d,"duration_us":%d,"status_errors":%d,"socket_errors":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
