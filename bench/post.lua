-- wrk script: POSTs one fixed body and, when done, prints the run's figures as one JSON line.
-- Usage: wrk ... -s bench/post.lua URL -- BODY_FILE CONTENT_TYPE
-- Every response that is not 200 is counted by status, so a fast stream of errors can never
-- pass for throughput.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   local file = assert(io.open(args[1], "rb"), "cannot open body file " .. tostring(args[1]))
   wrk.method = "POST"
   wrk.body = file:read("*a")
   file:close()
   wrk.headers["Content-Type"] = args[2]
   non_200 = 0
   statuses = {}
end

function response(status, headers, body)
   if status ~= 200 then
      non_200 = non_200 + 1
      statuses[status] = (statuses[status] or 0) + 1
   end
end

function done(summary, latency, requests)
   local non_200_total, by_status = 0, {}
   for _, thread in ipairs(threads) do
      non_200_total = non_200_total + thread:get("non_200")
      for status, count in pairs(thread:get("statuses")) do
         by_status[status] = (by_status[status] or 0) + count
      end
   end
   local status_items = {}
   for status, count in pairs(by_status) do
      table.insert(status_items, string.format('"%d": %d', status, count))
   end
   local seconds = summary.duration / 1e6
   local errors = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests": %d, "duration_s": %.6f, "requests_per_s": %.3f, "bytes": %d, '
         .. '"errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d, "status": %d}, '
         .. '"non_200": %d, "statuses": {%s}, '
         .. '"latency_us": {"min": %d, "mean": %.3f, "stdev": %.3f, "max": %d, '
         .. '"p50": %d, "p90": %d, "p99": %d, "p999": %d}}\n',
      summary.requests, seconds, summary.requests / seconds, summary.bytes,
      errors.connect, errors.read, errors.write, errors.timeout, errors.status,
      non_200_total, table.concat(status_items, ", "),
      latency.min, latency.mean, latency.stdev, latency.max,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9)))
end
