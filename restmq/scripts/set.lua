-- SET(key, value): ARGV = key, value, deadline[, channel, message]: a plain SET (status,
-- policy) that is not applied late, optionally publishing a notification with it.
if expired(ARGV[3]) then
  return redis.error_reply('EXPIRED the deadline passed before Redis ran this')
end
redis.call('SET', ARGV[1], ARGV[2])
if ARGV[4] then
  redis.call('PUBLISH', ARGV[4], ARGV[5])
end
return 'OK'
