-- Open-loop, paced load for Debian's wrk (4.1, LuaJIT), in the manner of wrk2: request k
-- is due at t0 + k / rate whatever happened to the ones before it, and its latency counts
-- from when it was due, not from when a free connection finally sent it (no coordinated
-- omission). How late each request actually left is recorded too (send lag): a client
-- that cannot keep the schedule shows instead of passing for a slow service.
--
-- Driven by load_tests/overload.py, which sets (environment):
--   PACE_RATE     requests per second per wrk thread; 0: closed loop (as fast as answered)
--   PACE_PATH     the route, e.g. /v1/rerank
--   PACE_BODY     file holding the JSON body
--   PACE_EXPECT   the expected result order, e.g. "3,0,2,1" ("" skips the check)
--   PACE_OUT      where done() writes one CSV line per answered request:
--                 status,latency_us,send_lag_us,json,retry_after,right
--
-- Each request carries its due time in x-request-id, which the service (and Serve's proxy,
-- for its own refusals) echoes, so an answer is matched to its due time whatever order the
-- connections answer in. wrk calls delay() before every request (each connection's first
-- too) and its timers have millisecond resolution: a request may leave up to about 1 ms
-- off its slot, which the send lag shows.

local ffi = require("ffi")
pcall(ffi.cdef, [[
typedef struct { long tv_sec; long tv_nsec; } pace_timespec;
int clock_gettime(int clk_id, pace_timespec *tp);
]])
local ts = ffi.new("pace_timespec")
local function now_us()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000000 + math.floor(tonumber(ts.tv_nsec) / 1000)
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

local rate, path, body, expect
local t0, slots, first, last = nil, 0, 1, 0
local due_queue = {}
records = {} -- global: done() reads it from each thread with thread:get

function init(args)
  rate = tonumber(os.getenv("PACE_RATE") or "0")
  path = os.getenv("PACE_PATH") or "/v1/rerank"
  local f = assert(io.open(os.getenv("PACE_BODY"), "rb"))
  body = f:read("*a")
  f:close()
  expect = os.getenv("PACE_EXPECT") or ""
end

-- Called after each answer, before the connection's next request: claim the next slot of
-- the schedule and wait until it is due (0 if it already is).
function delay()
  local now = now_us()
  if rate <= 0 then
    return 0
  end
  if t0 == nil then
    t0 = now
  end
  slots = slots + 1
  local due = t0 + math.floor(slots * 1000000 / rate)
  last = last + 1
  due_queue[last] = due
  local wait_ms = (due - now) / 1000
  if wait_ms < 0 then
    return 0
  end
  return wait_ms
end

function request()
  local now = now_us()
  local due
  if rate <= 0 then
    due = now
    if t0 == nil then
      t0 = now
    end
  else
    if first > last then -- cannot happen (delay() claims a slot first); not counted
      return wrk.format("GET", "/healthz")
    end
    -- Timers fire in due order, so the oldest claimed slot is this request's.
    due = due_queue[first]
    due_queue[first] = nil
    first = first + 1
  end
  local headers = {
    ["Content-Type"] = "application/json",
    ["x-request-id"] = string.format("p%d_%d", due, now - due),
  }
  return wrk.format("POST", path, headers, body)
end

local function header(headers, name)
  for k, v in pairs(headers) do
    if string.lower(k) == name then
      return v
    end
  end
  return nil
end

local function right_order(text)
  if expect == "" then
    return 1
  end
  local got = {}
  for index in string.gmatch(text, '"index"%s*:%s*(%d+)') do
    table.insert(got, index)
  end
  return table.concat(got, ",") == expect and 1 or 0
end

function response(status, headers, text)
  local rid = header(headers, "x-request-id")
  if rid == nil then
    return
  end
  local due, lag = string.match(rid, "^p(%d+)_(%-?%d+)$")
  if due == nil then
    return -- the warm-up GET
  end
  local latency = now_us() - tonumber(due)
  local ctype = header(headers, "content-type") or ""
  local is_json = (string.find(ctype, "application/json", 1, true) ~= nil) and 1 or 0
  local retry_after = header(headers, "retry-after") and 1 or 0
  local right = 1
  if status == 200 then
    right = right_order(text)
  end
  records[#records + 1] =
    string.format("%d,%d,%s,%d,%d,%d", status, latency, lag, is_json, retry_after, right)
end

function done(summary, latency, requests)
  local out = assert(io.open(os.getenv("PACE_OUT"), "w"))
  for _, thread in ipairs(threads) do
    local lines = thread:get("records")
    for _, line in ipairs(lines) do
      out:write(line, "\n")
    end
  end
  local e = summary.errors
  out:write(
    string.format(
      "#errors,%d,%d,%d,%d,%d,%d\n",
      e.connect,
      e.read,
      e.write,
      e.status,
      e.timeout,
      summary.duration
    )
  )
  out:close()
end
