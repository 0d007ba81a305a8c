resource "aws_lb" "gateway" {
  #checkov:skip=CKV2_AWS_28:a WAF is the operator's choice (and cost); the gateway already caps bodies, headers and streams
  name                       = substr("${local.name}-alb", 0, 32)
  load_balancer_type         = "application"
  internal                   = false
  security_groups            = [aws_security_group.alb.id]
  subnets                    = var.public_subnet_ids
  drop_invalid_header_fields = true
  enable_deletion_protection = true
  # Requests whose framing two parsers may read differently (Content-Length with
  # Transfer-Encoding, and the like) are refused here: the gateway's own protocol refuses them
  # too, but granian and hypercorn take some (README, Errors), and an ALB and a target that
  # read one connection as different requests is a desync.
  desync_mitigation_mode = "strictest"
  # Above the longest silence a good request has: a non-streaming answer arrives whole, up to
  # timeouts.response_s (600 s) after the request, with nothing sent before it. Below the
  # gateway's keep-alive (server.keepalive_s = 630 in example/gateway.toml.tftpl): the ALB
  # lets go of an idle connection to a target before the target does, so it never sends a
  # request on one the gateway is closing (a 502; AWS's ALB docs ask for a target keep-alive
  # longer than the idle timeout).
  idle_timeout = 620
  access_logs {
    bucket  = var.alb_logs_bucket
    prefix  = local.name
    enabled = true
  }
  tags = local.tags
}

resource "aws_lb_target_group" "gateway" {
  name     = substr("${local.name}-gw", 0, 32)
  port     = 8080
  protocol = "HTTP"
  vpc_id   = var.vpc_id
  # The autoscaling group ends a host (scale-in, refresh, replacement) by deregistering it here,
  # waiting this delay, and only then terminating it (the gateway's own SIGTERM drain,
  # server.drain_timeout_s = 30 s, starts after the delay): what is still in flight when the
  # delay ends is cut. A request may run timeouts.total_s (600 s) after it arrived, a
  # non-streaming answer timeouts.response_s (600 s) after it was sent upstream, behind a body
  # of up to server.body_timeout_s (30 s) and connects: 660 s (ALB maximum 3600 s). AWS ends
  # the wait early for a target with no request in flight and no active connection; whether
  # the ALB's own idle keep-alive connections count is not documented, so a scale-in or
  # refresh step may take the whole 660 s per host: the price of not cutting answers.
  deregistration_delay = 660
  health_check {
    path                = "/readyz"
    port                = "traffic-port"
    protocol            = "HTTP"
    matcher             = "200"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }
  tags = local.tags
}

resource "aws_lb_listener" "https" {
  load_balancer_arn = aws_lb.gateway.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.certificate_arn
  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.gateway.arn
  }
  tags = local.tags
}
