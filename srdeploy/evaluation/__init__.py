"""`srdeploy evaluate`: bicubic and every model on one set of HR images, under the quality
protocol (srdeploy.quality), as a table, CSVs and a comparison figure."""
