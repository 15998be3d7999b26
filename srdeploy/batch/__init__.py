"""`srdeploy upscale`: files and folders through the Upscaler, pipelined, journalled, losing nothing."""
