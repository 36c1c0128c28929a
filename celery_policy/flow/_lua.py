"""The Lua scripts behind breakers and limits. Each runs atomically in Redis and reads Redis' own clock
(``TIME``), so workers whose clocks disagree still share one schedule."""

from __future__ import annotations

# KEYS[1] state hash, KEYS[2] window hash (per-bucket call and failure counts)
# ARGV: op, successes, failures, window_s, buckets, failure_rate, min_calls, open_for_s, half_open_calls, ttl_s
# op: report | acquire | probe_ok | probe_fail | probe_release | force_open | force_close | get
# returns {state, since, open_remaining_s, calls, failures, changed_to, verdict, forced, rate_at_open}
BREAKER = """
pcall(redis.replicate_commands)
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local key, wkey = KEYS[1], KEYS[2]
local op = ARGV[1]
local ds, df = tonumber(ARGV[2]), tonumber(ARGV[3])
local window, nb = tonumber(ARGV[4]), tonumber(ARGV[5])
local rate, min_calls = tonumber(ARGV[6]), tonumber(ARGV[7])
local open_for, hoc, ttl = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local h = redis.call('HMGET', key, 'state', 'since', 'open_until', 'granted', 'ok', 'forced', 'probe_at',
  'rate_at_open')
local state = h[1] or 'closed'
local since = tonumber(h[2]) or 0  -- 0: never changed
local open_until = tonumber(h[3]) or 0
local granted = tonumber(h[4]) or 0
local ok = tonumber(h[5]) or 0
local forced = h[6] or ''
local probe_at = tonumber(h[7]) or 0
local rate_at_open = h[8] or ''
local changed, verdict, dirty = '', '', false
local bucket = math.floor(now / (window / nb))

local function sums(add_s, add_f)
  if add_s > 0 then redis.call('HINCRBY', wkey, 's' .. bucket, add_s) end
  if add_f > 0 then redis.call('HINCRBY', wkey, 'f' .. bucket, add_f) end
  if add_s + add_f > 0 then redis.call('EXPIRE', wkey, math.ceil(window) + 60) end
  local all = redis.call('HGETALL', wkey)
  local calls, fails, stale = 0, 0, {}
  for i = 1, #all, 2 do
    local b = tonumber(string.sub(all[i], 2))
    if b == nil or b <= bucket - nb then
      table.insert(stale, all[i])
    else
      local n = tonumber(all[i + 1])
      calls = calls + n
      if string.sub(all[i], 1, 1) == 'f' then fails = fails + n end
    end
  end
  if #stale > 0 then redis.call('HDEL', wkey, unpack(stale)) end
  return calls, fails
end

local function move(to)
  state, since, changed, dirty = to, now, to, true
  granted, ok = 0, 0
end

local calls, fails = 0, 0
if op == 'force_open' then
  move('open'); forced = 'open'; open_until = now + open_for; rate_at_open = ''
elseif op == 'force_close' then
  move('closed'); forced = ''; redis.call('DEL', wkey)
elseif op == 'report' then
  if state == 'closed' then
    calls, fails = sums(ds, df)
    if df > 0 and calls >= min_calls and fails >= rate * calls then
      rate_at_open = string.format('%.4f', fails / calls)
      move('open'); open_until = now + open_for
      redis.call('DEL', wkey)
    end
  end
elseif op == 'acquire' then
  if state == 'open' and forced ~= 'open' and now >= open_until then move('half_open') end
  if state == 'half_open' then
    -- probes whose outcome never came back (their worker died) are given out again
    if granted > ok and now - probe_at > open_for + 30 then granted = ok; dirty = true end
    if granted < hoc then granted = granted + 1; probe_at = now; verdict = 'probe'; dirty = true
    else verdict = 'wait' end
  elseif state == 'closed' then
    verdict = 'run'
  else
    verdict = 'wait'
  end
elseif op == 'probe_ok' then
  if state == 'half_open' then
    ok = ok + 1; dirty = true
    if ok >= hoc then move('closed'); redis.call('DEL', wkey) end
  end
elseif op == 'probe_fail' then
  if state == 'half_open' then move('open'); open_until = now + open_for; rate_at_open = '' end
elseif op == 'probe_release' then
  if state == 'half_open' and granted > ok then granted = granted - 1; dirty = true end
elseif op == 'get' then
  if state == 'closed' then calls, fails = sums(0, 0) end
end
if dirty then
  redis.call('HSET', key, 'state', state, 'since', string.format('%.6f', since),
    'open_until', string.format('%.6f', open_until), 'granted', granted, 'ok', ok, 'forced', forced,
    'probe_at', string.format('%.6f', probe_at), 'rate_at_open', rate_at_open)
  redis.call('EXPIRE', key, ttl)
end
local remaining = open_until - now
if state ~= 'open' or remaining < 0 then remaining = 0 end
if forced == 'open' and state == 'open' then remaining = open_for end
return {state, string.format('%.6f', since), string.format('%.6f', remaining), calls, fails, changed, verdict,
  forced, rate_at_open}
"""

# GCRA (a token bucket written as a "theoretical arrival time"): KEYS[1] the limit's TAT
# ARGV: seconds per token, tolerance_s ((burst - 1) * seconds per token), max_wait_s
# returns {granted ('1') or refused ('0'), wait_s}: granted with wait 0 = run now; granted with wait > 0 = the
# slot is reserved that far ahead (come back then); refused = the wait would pass max_wait_s (nothing reserved)
LIMIT = """
pcall(redis.replicate_commands)
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval, tolerance, max_wait = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end
local wait = tat - now - tolerance
if wait < 0 then wait = 0 end
if wait > max_wait then return {'0', string.format('%.6f', wait)} end
local new = tat + interval
redis.call('SET', KEYS[1], string.format('%.6f', new), 'PX', math.ceil((new - now) * 1000) + 1000)
return {'1', string.format('%.6f', wait)}
"""
