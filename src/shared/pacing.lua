-- One step of a shared bucket's pacing, atomically: the same arithmetic as
-- src/limiter/pacing.rs (Pacing), which documents the policy. Keep the two in step;
-- tests/it/shared.rs runs one script of events through both and compares.
--
-- KEYS[1]  the bucket (a hash)
-- ARGV[1]  reserve | release | throttled | observe | read
-- ARGV[2]  now in seconds, or "" for Redis's clock (tests pass their own)
-- ARGV[3]  rate   ARGV[4] burst   ARGV[5] hard ceiling or ""   (the shape, if the bucket is new)
-- ARGV[6]  tokens a new bucket starts with
-- ARGV[7]  the step's argument: max_wait (reserve), seq (release), age (throttled), rate (observe)
-- ARGV[8]  "1": this replica comes back from its local fallback, so Amazon's bucket is taken
--          to be empty (the replicas spent it meanwhile)
-- ARGV[9]  seconds an idle bucket is kept
--
-- Answers strings: {outcome, wait, left, seq, rate, throttled, tokens}, outcome "ok" or "late"
-- (reserve: wait is then how long until a slot), "done" for the other steps.

local CUT, MARGIN, QUIET = 0.7, 0.97, 0.25
local MEASURED_SPAN, START_SPAN = 30.0, 5.0
local PROBE_LINEAR, PROBE_QUADRATIC, FLOOR = 0.002, 0.0002, 0.02
-- Redis's clock less a fixed epoch, so seconds keep their microseconds in a double.
local EPOCH = 1700000000

local key = KEYS[1]
local op = ARGV[1]
local now
if ARGV[2] ~= "" then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = (tonumber(t[1]) - EPOCH) + tonumber(t[2]) / 1000000
end

local names = {'tat', 'base', 'ceiling', 'hard', 'burst', 'cut_at', 'mark_at',
               'mark_admitted', 'admitted', 'seq'}
local p = {}
local stored = redis.call('HMGET', key, unpack(names))
if stored[1] then
  for i, n in ipairs(names) do p[n] = tonumber(stored[i]) end
  -- -1 stands for "none" in the hash.
  if p.hard < 0 then p.hard = nil end
  if p.cut_at < 0 then p.cut_at = nil end
else
  -- Pacing::new
  local rate, burst, initial = tonumber(ARGV[3]), math.max(tonumber(ARGV[4]), 1), tonumber(ARGV[6])
  local hard = nil
  if ARGV[5] ~= "" then hard = tonumber(ARGV[5]) end
  local ceiling = rate
  if hard then ceiling = math.min(hard, rate) end
  initial = math.min(math.max(initial, 0), burst)
  p.tat = now + (burst - initial) / ceiling
  p.base, p.ceiling, p.hard, p.burst = ceiling, ceiling, hard, burst
  p.cut_at, p.mark_at, p.mark_admitted, p.admitted, p.seq = nil, now, -initial, 0, 0
end

local function rate_at(t)
  if not p.cut_at then return math.min(p.base, p.ceiling) end
  local d = math.max(t - p.cut_at, 0)
  local climb = p.ceiling * (PROBE_LINEAR * d + PROBE_QUADRATIC * d * d)
  return math.min(p.base + climb, p.ceiling)
end

if ARGV[8] == "1" then
  p.tat = math.max(p.tat, now + p.burst / rate_at(now))
end

local outcome, wait, left, seq = "done", 0, 0, 0
local arg = tonumber(ARGV[7]) or 0

if op == 'reserve' then
  local interval = 1 / rate_at(now)
  local tat = math.max(p.tat, now) + interval
  wait = math.max((tat - now) - p.burst * interval, 0)
  if wait < 1e-9 then wait = 0 end
  if wait > arg then
    outcome = "late"
  else
    outcome = "ok"
    p.tat = tat
    p.admitted = p.admitted + 1
    p.seq = p.seq + 1
    seq = p.seq
    left = math.floor(math.max((p.burst * interval - (tat - now)) / interval, 0))
  end
elseif op == 'release' then
  if p.seq == arg then
    p.tat = p.tat - 1 / rate_at(now)
    p.admitted = p.admitted - 1
    p.seq = p.seq - 1
  end
elseif op == 'throttled' then
  p.admitted = p.admitted - 1
  local sent = now - math.max(arg, 0)
  if not (p.cut_at and (now - p.cut_at < QUIET or sent < p.cut_at)) then
    local rate = rate_at(now)
    local span = now - p.mark_at
    local limit = START_SPAN
    if p.cut_at then limit = MEASURED_SPAN end
    local cut = rate * CUT
    if span >= QUIET and span <= limit then
      local m = (p.admitted - p.mark_admitted) / span
      if m > 0 and m < math.huge then cut = math.min(m * MARGIN, rate * MARGIN) end
    end
    local base = math.max(cut, rate * CUT * CUT, p.ceiling * FLOOR)
    p.base = base
    p.cut_at = now
    p.mark_at = now
    p.mark_admitted = p.admitted
    p.tat = math.max(p.tat, now + p.burst / base)
  end
elseif op == 'observe' then
  if arg > 0 and arg < math.huge then
    local ceiling = arg
    if p.hard then ceiling = math.min(p.hard, arg) end
    if math.abs(ceiling - p.ceiling) >= 1e-9 then
      local before = rate_at(now)
      local owed = math.max(p.tat - now, 0) * before
      p.ceiling = ceiling
      if not p.cut_at then p.base = ceiling else p.base = math.min(p.base, ceiling) end
      p.tat = now + owed / rate_at(now)
    end
  end
end

local hard, cut_at = p.hard or -1, p.cut_at or -1
local function f(x) return string.format('%.17g', x) end
redis.call('HSET', key, 'tat', f(p.tat), 'base', f(p.base), 'ceiling', f(p.ceiling),
  'hard', f(hard), 'burst', f(p.burst), 'cut_at', f(cut_at), 'mark_at', f(p.mark_at),
  'mark_admitted', f(p.mark_admitted), 'admitted', f(p.admitted), 'seq', f(p.seq))
redis.call('EXPIRE', key, tonumber(ARGV[9]))

local rate = rate_at(now)
local throttled = "0"
if rate < p.ceiling - 1e-9 then throttled = "1" end
local tokens = math.min(math.max(p.burst - math.max(p.tat - now, 0) * rate, 0), p.burst)
return {outcome, f(wait), f(left), f(seq), f(rate), throttled, f(tokens)}
