"""The fair queue: which queued audit a free worker slot takes next (docs/SCHEDULING.md).

Jobs keep arq's format, and arq's queue (a sorted set) keeps the jobs that are running
or deferred, so arq's own crash and retry semantics still hold. Jobs waiting for a slot
wait in one list per flow (a tenant's batch, or its single audits) under
`<queue>:fair:`, and a script picks among them by stride scheduling at three levels:

1. the priority class: interactive first, bulk keeping `BULK_MIN_SHARE` of the picks
   while both wait;
2. within a class, the tenant with the lowest pass, which then advances by 1/weight;
3. within the tenant, the flow with the lowest pass, which then advances by 1.

A tenant or flow that starts waiting again joins at the class's (tenant's) virtual
clock, the pass of the last pick: it neither banks credit while idle nor waits
behind the backlog of the others. A class alone takes every slot (work-conserving),
and the idle one is brought up to its pass, for the same reason.

A tenant can be put on hold (its monthly budget is spent): it leaves the waiting of
both classes until it is released, and its jobs stay in their flows meanwhile, picked
by no one and costing nothing.

Every key is built in the scripts from one prefix: arq runs on one Redis, not a cluster.
"""

from dataclasses import dataclass
from uuid import UUID

from arq.connections import ArqRedis

from shared.audits.priority import Priority

SINGLE_FLOW = "single"


@dataclass(frozen=True, slots=True)
class QueuedRun:
    """What the fair queue needs to know of an audit to queue its run."""

    audit_id: UUID
    tenant: str
    priority: Priority
    batch_id: UUID | None

    @property
    def flow(self) -> str:
        return SINGLE_FLOW if self.batch_id is None else str(self.batch_id)


def fair_prefix(queue_name: str) -> str:
    return f"{queue_name}:fair:"


def wake_channel(queue_name: str) -> str:
    """Where the enqueue script says that work was queued (the count, as a message)."""
    return fair_prefix(queue_name) + "wake"


# Puts a flow's tenant among the waiting of its class, at the class's virtual clock (or
# where it left off, if later), unless it is there already.
_ACTIVATE = """
local function activate(zset, member, clock_field, left_field)
  if redis.call('ZSCORE', zset, member) then return end
  local pass = tonumber(redis.call('HGET', clocks, clock_field) or '0')
  if left_field then
    local left = redis.call('HGET', prefix .. 'left', left_field)
    if left and tonumber(left) > pass then pass = tonumber(left) end
  end
  redis.call('ZADD', zset, pass, member)
end
"""

# KEYS: arq's abort marks, then each job's key. ARGV: the fair prefix, the job keys'
# lifetime (ms), then each job's id, payload, priority, tenant and flow. A job is queued
# only when its key is new (arq's deduplication by job id, SET NX): a job already queued,
# running or deferred is left where it is. Workers are told on `<prefix>wake` that work
# was queued, so an idle one starts it at once rather than at its next poll. The job of
# a tenant on hold joins its flow, but the tenant does not join the waiting (`HOLD_LUA`).
ENQUEUE_LUA = (
    """
local prefix, expires = ARGV[1], ARGV[2]
local clocks = prefix .. 'clock'
"""
    + _ACTIVATE
    + """
local queued = 0
for i = 2, #KEYS do
  local a = 5 * (i - 2) + 3
  local job_id, priority, tenant, flow = ARGV[a], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  redis.call('ZREM', KEYS[1], job_id)
  if redis.call('SET', KEYS[i], ARGV[a + 1], 'PX', expires, 'NX') then
    local owner = priority .. ':' .. tenant
    redis.call('RPUSH', prefix .. 'jobs:' .. owner .. ':' .. flow, job_id)
    redis.call('HINCRBY', prefix .. 'depth', owner, 1)
    activate(prefix .. 'flows:' .. owner, flow, owner, nil)
    if redis.call('SISMEMBER', prefix .. 'held', tenant) == 0 then
      activate(prefix .. 'tenants:' .. priority, tenant, priority, owner)
    end
    queued = queued + 1
  end
end
if queued > 0 then redis.call('PUBLISH', prefix .. 'wake', queued) end
"""
)

# ARGV: the fair prefix, a tenant. Puts the tenant on hold: it leaves the waiting of
# both classes, so no pick chooses it, and its flows and jobs stay as they are. Where
# it had got to is kept, as when it runs out of work, so it does not jump ahead later.
HOLD_LUA = """
local prefix, tenant = ARGV[1], ARGV[2]
redis.call('SADD', prefix .. 'held', tenant)
for _, priority in ipairs({'interactive', 'bulk'}) do
  local tenants = prefix .. 'tenants:' .. priority
  local pass = redis.call('ZSCORE', tenants, tenant)
  if pass then
    redis.call('HSET', prefix .. 'left', priority .. ':' .. tenant, pass)
    redis.call('ZREM', tenants, tenant)
  end
end
"""

# ARGV: the fair prefix, a tenant. Takes the tenant off hold: it joins the waiting of
# each class where it has jobs, and idle workers are woken. Returns its jobs waiting.
RELEASE_LUA = (
    """
local prefix, tenant = ARGV[1], ARGV[2]
local clocks = prefix .. 'clock'
"""
    + _ACTIVATE
    + """
redis.call('SREM', prefix .. 'held', tenant)
local waiting = 0
for _, priority in ipairs({'interactive', 'bulk'}) do
  local owner = priority .. ':' .. tenant
  if redis.call('EXISTS', prefix .. 'flows:' .. owner) == 1 then
    activate(prefix .. 'tenants:' .. priority, tenant, priority, owner)
    waiting = waiting + tonumber(redis.call('HGET', prefix .. 'depth', owner) or '0')
  end
end
if waiting > 0 then redis.call('PUBLISH', prefix .. 'wake', waiting) end
return waiting
"""
)

# KEYS: arq's queue. ARGV: the in-progress and job key prefixes, now (ms), the in-progress
# timeout (ms), the most jobs to start, the fair prefix, the bulk share, then the due job
# ids read from arq's queue. Returns id, score, id, score, … of the jobs marked in progress.
#
# First the due jobs of arq's queue that nobody runs (a deferred retry come due, the job
# of a killed worker whose in-progress key expired), under arq's conditions; then, for
# the slots left, jobs from the fair queue, each added to arq's queue as arq's
# `enqueue_job` would have (and marked in progress as arq's `start_jobs` does), so from
# there on arq handles it as any job of its own. A popped id whose job key is gone, or
# that is already running or in arq's queue (queued twice), is dropped.
PICK_LUA = """
local queue, progress, job_prefix = KEYS[1], ARGV[1], ARGV[2]
local now, timeout_ms, limit = tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local prefix, bulk_share = ARGV[6], tonumber(ARGV[7])
local clocks, classes = prefix .. 'clock', prefix .. 'class'
local started = {}
local function start(job_id, score)
  redis.call('PSETEX', progress .. job_id, timeout_ms, '1')
  table.insert(started, job_id)
  table.insert(started, score)
end
for i = 8, #ARGV do
  if #started >= 2 * limit then break end
  local job_id = ARGV[i]
  if redis.call('EXISTS', progress .. job_id) == 0 then
    local score = redis.call('ZSCORE', queue, job_id)
    if score and tonumber(score) <= now then start(job_id, score) end
  end
end
local stride = {interactive = 1 / (1 - bulk_share), bulk = 1 / bulk_share}
local function lowest(zset)
  local first = redis.call('ZRANGE', zset, 0, 0, 'WITHSCORES')
  return first[1], tonumber(first[2])
end
local function class_pass(priority)
  return tonumber(redis.call('HGET', classes, priority) or '0')
end
local function choose_class()
  local waiting = {}
  for _, priority in ipairs({'interactive', 'bulk'}) do
    if redis.call('EXISTS', prefix .. 'tenants:' .. priority) == 1 then
      table.insert(waiting, priority)
    end
  end
  if #waiting == 0 then return nil end
  local chosen, other = waiting[1], waiting[2]
  if other and class_pass(other) < class_pass(chosen) then chosen, other = other, chosen end
  local pass = class_pass(chosen)
  redis.call('HSET', classes, chosen, pass + stride[chosen])
  if not other then
    local idle = chosen == 'bulk' and 'interactive' or 'bulk'
    if class_pass(idle) < pass then redis.call('HSET', classes, idle, pass) end
  end
  return chosen
end
local function advance(zset, member, pass, step, clock_field)
  redis.call('ZADD', zset, pass + step, member)
  redis.call('HSET', clocks, clock_field, pass)
end
local function pop(priority)
  local tenants = prefix .. 'tenants:' .. priority
  local tenant, tenant_pass = lowest(tenants)
  local owner = priority .. ':' .. tenant
  local weight = tonumber(redis.call('HGET', prefix .. 'weight', tenant) or '1')
  advance(tenants, tenant, tenant_pass, 1 / weight, priority)
  local flows = prefix .. 'flows:' .. owner
  local flow, flow_pass = lowest(flows)
  advance(flows, flow, flow_pass, 1, owner)
  local list = prefix .. 'jobs:' .. owner .. ':' .. flow
  local job_id = redis.call('LPOP', list)
  redis.call('HINCRBY', prefix .. 'depth', owner, -1)
  if redis.call('LLEN', list) == 0 then
    redis.call('ZREM', flows, flow)
    if redis.call('EXISTS', flows) == 0 then
      redis.call('ZREM', tenants, tenant)
      redis.call('HSET', prefix .. 'left', owner, tenant_pass + 1 / weight)
      redis.call('HDEL', prefix .. 'depth', owner)
    end
  end
  return job_id
end
local budget = 2 * limit + 100
while #started < 2 * limit and budget > 0 do
  budget = budget - 1
  local priority = choose_class()
  if not priority then break end
  local job_id = pop(priority)
  if job_id and redis.call('EXISTS', job_prefix .. job_id) == 1
      and redis.call('EXISTS', progress .. job_id) == 0
      and not redis.call('ZSCORE', queue, job_id) then
    redis.call('ZADD', queue, now, job_id)
    start(job_id, now)
  end
end
return started
"""


async def set_weights(redis: ArqRedis, queue_name: str, weights: dict[str, int]) -> None:
    """Tell the fair queue each tenant's weight (a tenant it does not know weighs 1)."""
    if weights:
        await redis.hset(fair_prefix(queue_name) + "weight", mapping=weights)  # type: ignore[misc]


async def hold_tenant(redis: ArqRedis, queue_name: str, tenant: str) -> None:
    """Stop picking the tenant's jobs; they keep their place (shared/spend/budgets.py)."""
    await redis.register_script(HOLD_LUA)(args=[fair_prefix(queue_name), tenant])


async def release_tenant(redis: ArqRedis, queue_name: str, tenant: str) -> int:
    """Pick the tenant's jobs again; how many wait."""
    waiting: int = await redis.register_script(RELEASE_LUA)(args=[fair_prefix(queue_name), tenant])
    return waiting


async def held_tenants(redis: ArqRedis, queue_name: str) -> set[str]:
    """The tenants on hold."""
    members = await redis.smembers(fair_prefix(queue_name) + "held")  # type: ignore[misc]
    return {member.decode() for member in members}


async def queue_depths(redis: ArqRedis, queue_name: str) -> dict[tuple[Priority, str], int]:
    """Audits waiting for a slot, by (priority, tenant): one HGETALL."""
    depths = await redis.hgetall(fair_prefix(queue_name) + "depth")  # type: ignore[misc]
    found: dict[tuple[Priority, str], int] = {}
    for owner, count in depths.items():
        priority, _, tenant = owner.decode().partition(":")
        if int(count) > 0:
            found[(Priority(priority), tenant)] = int(count)
    return found


async def waiting_jobs(redis: ArqRedis, queue_name: str) -> list[str]:
    """The ids of the jobs waiting for a slot, flow by flow (for ops and tests: it scans)."""
    found: list[str] = []
    async for key in redis.scan_iter(match=fair_prefix(queue_name) + "jobs:*"):
        found += [job_id.decode() for job_id in await redis.lrange(key, 0, -1)]  # type: ignore[misc]
    return found
