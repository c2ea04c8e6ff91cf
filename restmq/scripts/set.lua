-- SET(key, value). KEYS: the key (a queue's status or policy). ARGV: value, deadline[, channel,
-- message]: a plain SET that is not applied late, optionally publishing a notice with it.
local late = guard(ARGV[2]) if late then return late end
redis.call('SET', KEYS[1], ARGV[1])
if ARGV[3] then
  redis.call('PUBLISH', ARGV[3], ARGV[4])
end
return 'OK'
