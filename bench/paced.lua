-- wrk script: post.lua with a pause before each request, so that a run holds a rate
-- instead of going flat out (wrk is closed-loop: each connection sends its next request
-- when the previous one is answered, then here waits DELAY_MS more).
-- Usage: wrk ... -s bench/paced.lua URL -- BODY_FILE CONTENT_TYPE DELAY_MS

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "post.lua")

local post_init = init

function init(args)
   post_init(args)
   pause_ms = tonumber(args[3]) or 0
end

function delay()
   return pause_ms
end
